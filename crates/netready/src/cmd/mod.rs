//! One module per subcommand, each with `run(args)`.

pub mod compare;
pub mod report;
pub mod serve;
