//! One file per subcommand.
pub mod check;
pub mod explain;
pub mod prepare;
pub mod run;
pub mod status;
pub mod unload;
