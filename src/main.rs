use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    let cli = match embark::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
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

/// A command line clap refuses: its own output for people (and for `--help`, `--version`); with
/// `--log-format json`, one JSON error line (every stderr line parses) and exit 2.
fn usage_error(err: clap::Error) -> ExitCode {
    let json = {
        let args: Vec<String> = std::env::args().collect();
        args.iter().any(|a| a == "--log-format=json")
            || args
                .windows(2)
                .any(|w| w[0] == "--log-format" && w[1] == "json")
    };
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || informational {
        err.exit();
    }
    let text = err.render().to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ");
    let format = embark::output::LogFormat::Json;
    embark::output::init_logging(format, 0);
    embark::output::final_error(format, &format!("{first} (see `embark --help`)"), 2);
    ExitCode::from(2)
}
