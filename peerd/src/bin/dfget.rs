use clap::Parser;
use peerd::dfget::{Args, run};

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the runtime");
    let code = runtime.block_on(async {
        tokio::select! {
            result = run(args) => match result {
                Ok(()) => 0,
                Err(failure) => {
                    eprintln!("dfget: {}", failure.message);
                    failure.code
                }
            },
            // The partial output is removed when `run` is dropped.
            _ = tokio::signal::ctrl_c() => {
                eprintln!("dfget: interrupted; the output was not written");
                130
            }
        }
    });
    drop(runtime);
    std::process::exit(code);
}
