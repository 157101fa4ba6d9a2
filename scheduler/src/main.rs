fn main() -> anyhow::Result<()> {
    let args: scheduler::Args = api::config::parse_args();
    api::telemetry::init_logging(&args.log_level);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(scheduler::run(args))
}
