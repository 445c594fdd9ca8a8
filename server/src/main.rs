//! `pantau`: the platform binary. Parses the command line, sets up logging
//! and hands over to the library.

fn main() -> std::process::ExitCode {
    pantau::cli::main()
}
