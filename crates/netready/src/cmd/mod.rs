//! One module per subcommand, each with `run(args)`.

pub mod serve;
