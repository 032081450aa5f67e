use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = embark::cli::Cli::parse();
    embark::output::init_logging(cli.log_format, cli.verbosity());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("embark: error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(embark::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("embark: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
