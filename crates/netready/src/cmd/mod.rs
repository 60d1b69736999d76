//! One module per subcommand, each with `run(args)`.

pub mod compare;
pub mod drive;
pub mod local;
pub mod preflight;
pub mod report;
pub mod serve;
