//! turnxctl: inspect a running turnxd.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use turnx::xdp::{self, driver_stats, netlink};

/// Operator CLI for the turnx TURN relay.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the XDP programs on each interface, turnx's packet counters and
    /// the driver's XDP error counters.
    Status {
        /// Interfaces to show; default: every interface in this namespace.
        #[arg(long = "interface", short)]
        interfaces: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("turnxctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Status { interfaces, json } => status(interfaces, json),
    }
}

fn status(mut interfaces: Vec<String>, json: bool) -> Result<()> {
    if interfaces.is_empty() {
        interfaces = std::fs::read_dir("/sys/class/net")
            .context("listing /sys/class/net")?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        interfaces.sort();
    }
    let mut report = Vec::new();
    for name in &interfaces {
        let ifindex = xdp::if_index(name)?;
        let attached = netlink::attached_programs(ifindex)
            .with_context(|| format!("querying XDP programs on {name}"))?;
        // The XDP program's counters, or where the tc engine runs alone, its.
        let counters = match xdp::attached_counters(&attached)? {
            Some(counters) => Some(counters),
            None => xdp::tc_counters(name)?,
        };
        let errors = driver_stats::xdp_errors(name)
            .with_context(|| format!("reading the driver statistics of {name}"))?;
        report.push(serde_json::json!({
            "interface": name,
            "xdp": attached.iter().map(|program| serde_json::json!({
                "program_id": program.program_id,
                "mode": program.mode.to_string(),
            })).collect::<Vec<_>>(),
            "turnx": counters.map(|(id, counters)| serde_json::json!({
                "program_id": id,
                "counters": counters.to_json(),
            })),
            "driver_xdp_errors": errors
                .iter()
                .map(|(counter, value)| (counter.clone(), serde_json::json!(value)))
                .collect::<serde_json::Map<_, _>>(),
        }));
        if !json {
            print_text(name, &attached, counters);
            let lost: Vec<String> = errors
                .iter()
                .filter(|(_, value)| *value != 0)
                .map(|(counter, value)| format!("{counter}={value}"))
                .collect();
            if !lost.is_empty() {
                println!("{name}: the driver lost XDP frames: {}", lost.join(" "));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(report));
    }
    Ok(())
}

fn print_text(
    name: &str,
    attached: &[netlink::AttachedXdp],
    counters: Option<(u32, xdp::ClassCounters)>,
) {
    let ours = counters.as_ref().map(|(id, _)| *id);
    if let Some((id, counters)) = &counters {
        println!("{name}: turnx (program {id}): {counters}");
    }
    for program in attached {
        if Some(program.program_id) != ours {
            println!(
                "{name}: other XDP program {} ({} mode)",
                program.program_id, program.mode
            );
        }
    }
    if attached.is_empty() && counters.is_none() {
        println!("{name}: no XDP program");
    }
}
