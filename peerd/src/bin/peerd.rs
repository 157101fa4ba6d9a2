use peerd::config::PeerdArgs;

fn main() -> anyhow::Result<()> {
    let args: PeerdArgs = api::config::parse_args();
    api::telemetry::init_logging(&args.log_level);
    tokio::runtime::Runtime::new()?.block_on(peerd::daemon::run(args))
}
