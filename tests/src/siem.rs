//! The schemas the OCSF and ECS event lines are validated against, fetched by exact version and
//! hash from the package registries and cached under `target/siem/` (a fresh clone fetches them
//! once; later runs take well under a second):
//!
//! - OCSF 1.8.0: the schema.ocsf.io export bundled in the PyPI package `ocsf-json-schema` 1.2.0,
//!   which makes JSON Schema (draft 2020-12) of a class with its profiles; validated with
//!   `jsonschema` (tests/siem/requirements.txt, every version pinned). The schema file itself is
//!   checked by its SHA-256.
//! - ECS 9.4.0: the field definitions of the ECS release (`ecs_flat`) as Elastic publishes them in
//!   the npm package `@elastic/ecs` 9.4.0, checked by the SHA-256 of its tarball.
//!
//! tests/siem/validate.py does the checking; [`validate`] runs it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use sha2::{Digest as _, Sha256};

pub const OCSF_VERSION: &str = "1.8.0";
/// SHA-256 of `ocsf_json_schema/ocsf/1.8.0.json` in ocsf-json-schema 1.2.0.
const OCSF_SCHEMA_SHA256: &str = "221b43d05787aa68d03233589f0eabdab192531d3e4740b856b2e0a4d6d91f82";
pub const ECS_VERSION: &str = "9.4.0";
const ECS_NPM_PACKAGE: &str = "@elastic/ecs@9.4.0";
const ECS_TGZ_SHA256: &str = "1c7863cd70f9d52365570fa38a9c39f3d056511fefe4e36a51d2ad7f142ac071";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`validate`] runs with.
pub struct Validators {
    python: PathBuf,
    ocsf_schema: PathBuf,
    ecs_fields: PathBuf,
}

/// Installs what is missing (under a lock: test binaries run at once), once per process.
pub fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| {
        let dir = root().join("target/siem");
        fs::create_dir_all(&dir).unwrap();
        let lock = fs::File::create(dir.join(".lock")).unwrap();
        let _lock =
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("lock target/siem");
        let python = venv(&dir);
        let pkg = run(Command::new(&python)
            .args(["-c", "import ocsf_json_schema, os; print(os.path.dirname(ocsf_json_schema.__file__))"]));
        let ocsf_schema = PathBuf::from(pkg.trim()).join(format!("ocsf/{OCSF_VERSION}.json"));
        assert_eq!(
            sha256(&ocsf_schema),
            OCSF_SCHEMA_SHA256,
            "{} is not the pinned schema",
            ocsf_schema.display()
        );
        let ecs_fields = ecs(&dir);
        Validators { python, ocsf_schema, ecs_fields }
    })
}

/// target/siem/venv with tests/siem/requirements.txt (remade when that file changes).
fn venv(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let wanted = fs::read_to_string(root().join("tests/siem/requirements.txt")).unwrap();
    let stamp = venv.join("imds-guard-requirements.txt");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("[siem] installing the OCSF validator into {}", venv.display());
        run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root().join("tests/siem/requirements.txt")));
        fs::write(&stamp, wanted).unwrap();
    }
    venv.join("bin/python")
}

/// target/siem/ecs-<version>.json: `{"version", "fields"}` from the pinned npm package.
fn ecs(dir: &Path) -> PathBuf {
    let out = dir.join(format!("ecs-{ECS_VERSION}.json"));
    if out.exists() {
        return out;
    }
    eprintln!("[siem] fetching {ECS_NPM_PACKAGE}");
    let work = dir.join("ecs-package");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let tgz =
        run(Command::new("npm").args(["pack", "--silent", ECS_NPM_PACKAGE, "--pack-destination"]).arg(&work));
    let tgz = work.join(tgz.lines().last().expect("npm pack named no file").trim());
    assert_eq!(sha256(&tgz), ECS_TGZ_SHA256, "{ECS_NPM_PACKAGE} is not the pinned tarball");
    run(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&work).args(["package/build/commonjs"]));
    let js = work.join("package/build/commonjs");
    let tmp = out.with_extension("tmp");
    run(Command::new("node")
        .arg("-e")
        .arg(
            "const [dir, out] = process.argv.slice(1);\
             const fields = require(dir + '/ecs_flat.js').EcsFlat;\
             const version = require(dir + '/index.js').EcsVersion;\
             require('fs').writeFileSync(out, JSON.stringify({version, fields}));",
        )
        .arg(&js)
        .arg(&tmp));
    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&tmp).unwrap()).unwrap();
    assert_eq!(doc["version"], ECS_VERSION, "the package's ECS version");
    fs::rename(&tmp, &out).unwrap();
    let _ = fs::remove_dir_all(&work);
    out
}

/// Validates JSON lines in `format` (`ocsf` or `ecs`); the problems, one per line (empty: valid).
#[must_use]
pub fn validate(format: &str, lines: &[String]) -> Vec<String> {
    let v = validators();
    let schema = match format {
        "ocsf" => &v.ocsf_schema,
        "ecs" => &v.ecs_fields,
        other => panic!("no validator for {other}"),
    };
    let file = root().join(format!(
        "target/siem/lines-{format}-{}-{:?}.jsonl",
        std::process::id(),
        std::thread::current().id()
    ));
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new(&v.python)
        .arg(root().join("tests/siem/validate.py"))
        .arg(format)
        .arg(schema)
        .arg(&file)
        .output()
        .expect("run validate.py");
    let _ = fs::remove_file(&file);
    let problems: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert!(
        out.status.success() || !problems.is_empty(),
        "validate.py failed without naming a problem: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    problems
}
