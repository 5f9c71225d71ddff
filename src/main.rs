//! `inbound`: parse the command line and hand over to `cli`.

fn main() -> std::process::ExitCode {
    inbound::cli::main()
}
