use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = embark::cli::Cli::parse();
    let format = cli.log_format;
    embark::output::init_logging(format, cli.verbosity());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            embark::output::final_error(
                format,
                &format!("cannot start the async runtime: {err}"),
                1,
            );
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(embark::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.exit_code();
            embark::output::final_error(format, &err.to_string(), code);
            ExitCode::from(code)
        }
    }
}
