//! Reading a policy text into its [`PolicyFile`]: the common shape of a large policy through
//! [`fast_toml`](super::fast_toml), anything else (and every error) through the `toml` crate.

use super::{
    schema::PolicyFile,
    source::{ConfigError, Source},
};

impl Source {
    pub fn parse(&self) -> Result<PolicyFile, ConfigError> {
        // The common shape of a large policy, read without the `toml` crate's document tree;
        // anything else (and every error) is the `toml` crate's.
        if let Some(file) = crate::policy::fast_toml::parse(&self.text) {
            return Ok(file);
        }
        toml::from_str(&self.text).map_err(|e| self.error_at(e.span(), e.message().trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source { name: "policy.toml".into(), text: text.into() }
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = src("mode = \"enforce\"\n[[allow]]\nuidd = 0\n").parse().unwrap_err();
        assert_eq!(e.location, "policy.toml:3:1");
        assert!(e.message.contains("unknown field `uidd`"), "{e}");
        assert!(e.to_string().contains("uidd = 0"), "{e}");
    }

    #[test]
    fn negative_uid_is_an_error_with_position() {
        let e = src("[[allow]]\nuid = -5\n").parse().unwrap_err();
        assert_eq!(e.location, "policy.toml:2:7");
        assert!(e.message.contains("-5"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = src("mode = enforce\n").parse().unwrap_err();
        assert!(e.location.starts_with("policy.toml:1:"), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let p = src("mode = \"monitor\"\nendpoints = [\"aws-imds\", \"169.254.170.2\"]\n\
             [[allow]]\nuid = 0\n[[allow]]\nuser = \"root\"\n[[allow]]\ngroup = \"root\"\ngid = 0\n")
        .parse()
        .unwrap();
        assert_eq!(p.allow.len(), 3);
        assert_eq!(p.mode.unwrap().into_inner(), "monitor");
    }
}
