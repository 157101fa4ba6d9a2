//! The seed is peerd in seed mode: the same engine and flags, with its own
//! defaults so it can run beside a peerd on one host.

use peerd::config::PeerdArgs;

fn main() -> anyhow::Result<()> {
    let args: PeerdArgs = api::config::parse_args_with(|command| {
        command
            .name("seed")
            .about("dffs seed: roots new tasks, fetches from the origin and preheats")
            .mut_arg("data_dir", |a| a.default_value("/var/lib/dffs/seed"))
            .mut_arg("socket", |a| a.default_value("/run/dffs/seed.sock"))
            .mut_arg("upload_addr", |a| a.default_value("0.0.0.0:65006"))
            .mut_arg("metrics_addr", |a| a.default_value("127.0.0.1:65007"))
            .mut_arg("seed", |a| a.default_value("true"))
    });
    api::telemetry::init_logging(&args.log_level);
    tokio::runtime::Runtime::new()?.block_on(peerd::daemon::run(args))
}
