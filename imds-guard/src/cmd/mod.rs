//! One file per subcommand.
pub mod check;
pub mod events;
pub mod explain;
pub mod generate;
pub mod prepare;
pub mod run;
pub mod status;
pub mod suggest;
pub mod unload;
pub mod version;
