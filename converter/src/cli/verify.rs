//! `edgemed verify`: compares an FP32 model and its INT8 version on patch images or
//! random inputs: SQNR per output, top-1 agreement and, for rotation-equivariant
//! models, the rotation error of each; as a table or JSON. Long runs show progress
//! on stderr when it is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use edgemed_converter::{inputs, verify};
use edgemed_runtime::model::OnnxModel;

use super::Format;

// The subcommand's help text is the doc comment of its variant in main.rs.
#[derive(clap::Args)]
pub struct Args {
    /// The FP32 reference model.
    #[arg(value_name = "FP32")]
    fp32: PathBuf,
    /// Its INT8 (or float16) version, from `edgemed quantize`.
    #[arg(value_name = "INT8")]
    int8: PathBuf,
    /// Patch images to run: a file, a folder or a glob pattern; repeatable (default: --random 16,
    /// which says little about real data).
    #[arg(short, long = "input", value_name = "PATH", alias = "inputs", conflicts_with = "random")]
    inputs: Vec<PathBuf>,
    /// This many seeded random inputs instead of images.
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// table (aligned lines) or json (the same figures, and the counts behind the top-1 agreement).
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// The same as --format json (the old spelling).
    #[arg(long, hide = true, conflicts_with = "format")]
    json: bool,
    /// Fail (non-zero exit) when any output's SQNR is below this many dB.
    #[arg(long, value_name = "DB")]
    min_sqnr: Option<f64>,
    /// Fail (non-zero exit) when the top-1 agreement is below this fraction.
    #[arg(long, value_name = "FRACTION")]
    min_top1: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let a = OnnxModel::load(&args.fp32)?;
    let b = OnnxModel::load(&args.int8)?;
    let xs = if args.inputs.is_empty() {
        eprintln!("edgemed: note: random inputs, not data: the figures say little about real patches (give --input DIR)");
        inputs::random(&a, args.random.unwrap_or(16), 1)?
    } else {
        inputs::from_image_paths(&a, &args.inputs, 1024)?
    };
    let rotation = a.metadata.group_order >= 4 && a.metadata.group_order % 4 == 0;
    let mut bar = DelayedBar::new(verify::model_runs(&xs, rotation));
    let v = verify::verify_with_progress(&a, &b, &xs, rotation, &mut || bar.inc());
    bar.bar.finish_and_clear();
    let v = v?;
    match Format::chosen(args.format, args.json) {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Table => {
            println!("inputs           {}", v.inputs);
            for (name, db) in v.outputs.iter().zip(&v.sqnr_db) {
                println!("SQNR {name:<11} {db:.1} dB");
            }
            println!("top-1 agreement  {} ({} of {})", percent(v.top1_agreement), v.top1_agreeing, v.top1_compared);
            if let Some((f, q)) = v.rotation_error {
                println!("rotation error   FP32 {f:.1e}, quantized {q:.1e} (max |f(rot90 x) - f(x)| / max |f(x)|)");
            }
        }
    }
    // Thresholds make verify a gate: below them, one line and a non-zero exit.
    if let Some(min) = args.min_sqnr {
        if let Some((name, db)) = v.outputs.iter().zip(&v.sqnr_db).find(|(_, db)| db.is_nan() || **db < min) {
            anyhow::bail!("output {name}: SQNR {db:.2} dB is below --min-sqnr {min}");
        }
    }
    if let Some(min) = args.min_top1 {
        if v.top1_agreement.is_nan() || v.top1_agreement < min {
            anyhow::bail!("top-1 agreement {:.4} is below --min-top1 {min}", v.top1_agreement);
        }
    }
    Ok(())
}

/// A fraction as a percentage with the precision it needs: 100% and 0% exactly, else one
/// decimal, more only when one decimal would round to 100% or 0%.
fn percent(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    let p = 100.0 * x;
    let shown = |d: usize| format!("{p:.d$}");
    let decimals = if p == 100.0 || p == 0.0 {
        0
    } else {
        (1..6).find(|&d| shown(d).parse::<f64>().is_ok_and(|s| s != 100.0 && s != 0.0)).unwrap_or(6)
    };
    format!("{}%", shown(decimals))
}

/// Model runs per second with three significant figures at most.
fn rate(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() => "-".into(),
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 10.0 => format!("{r:.1}/s"),
        r => format!("{r:.2}/s"),
    }
}

/// Progress on stderr, shown only when stderr is a terminal and the work lasts over a second.
struct DelayedBar {
    bar: indicatif::ProgressBar,
    start: Instant,
    show: bool,
}

impl DelayedBar {
    fn new(len: usize) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::hidden());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} model runs, {rate}, eta {eta}")
                .expect("valid template")
                .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(s.per_sec()));
                }),
        );
        DelayedBar { bar, start: Instant::now(), show: std::io::stderr().is_terminal() }
    }

    fn inc(&mut self) {
        self.bar.inc(1);
        if self.show && self.start.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.show = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{percent, rate};

    #[test]
    fn rates_and_percentages_have_sensible_precision() {
        assert_eq!([percent(1.0), percent(0.0), percent(0.9375), percent(15.0 / 16.0)], ["100%", "0%", "93.8%", "93.8%"]);
        assert_eq!([percent(0.9999), percent(0.0001), percent(f64::NAN)], ["99.99%", "0.01%", "n/a"]);
        assert_eq!([rate(2.345678), rate(23.45678), rate(234.5678), rate(f64::INFINITY)], ["2.35/s", "23.5/s", "235/s", "-"]);
    }
}
