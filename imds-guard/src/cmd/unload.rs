use crate::{cli::PinArgs, pinned};

pub fn unload(args: &PinArgs) -> anyhow::Result<()> {
    let removed = pinned::unload(&args.pin_dir)?;
    if removed.is_empty() {
        println!("nothing pinned in {}: nothing to unload", args.pin_dir.display());
    } else {
        println!("imds-guard no longer enforces; removed:");
        for r in removed {
            println!("  {r}");
        }
    }
    Ok(())
}
