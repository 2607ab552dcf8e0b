//! User and group names, resolved through the host's user and group databases (NSS).

/// Why a name did not resolve: not in the database (it may appear later), or the lookup failed.
pub(super) enum Missing {
    Unknown(String),
    Failed(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Unknown(m) | Missing::Failed(m) => f.write_str(m),
        }
    }
}

pub(super) fn lookup_user(name: &str) -> Result<u32, Missing> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => {
            Err(Missing::Unknown(format!("unknown user `{name}`: no such user in the passwd database")))
        }
        Err(e) => Err(Missing::Failed(format!("cannot look up user `{name}`: {e}"))),
    }
}

pub(super) fn lookup_group(name: &str) -> Result<u32, Missing> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => {
            Err(Missing::Unknown(format!("unknown group `{name}`: no such group in the group database")))
        }
        Err(e) => Err(Missing::Failed(format!("cannot look up group `{name}`: {e}"))),
    }
}
