//! `geosteer-mkgeo` command line: see the library (`src/lib.rs`) for the format and the
//! guarantees. The library is also what the server's tests use to build variant databases
//! (no binary has to exist beside the test executables).

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use geosteer_mkgeo::{ASN_FILE, CITY_FILE, generate, write_atomically};

#[derive(Debug, Parser)]
#[command(
    name = "geosteer-mkgeo",
    about = "Compile geo/sample-networks.csv into sample MaxMind DB files \
             (sample-city.mmdb, sample-asn.mmdb)"
)]
struct Cli {
    /// Source CSV (network,country,continent,subdivision,city,lat,lon,asn,as_org).
    #[arg(long, default_value = "geo/sample-networks.csv")]
    input: PathBuf,

    /// Directory receiving sample-city.mmdb and sample-asn.mmdb.
    #[arg(long, default_value = "geo")]
    out_dir: PathBuf,

    /// Do not write anything: regenerate in memory and compare with the files
    /// in --out-dir. Exit status 1 if they are missing or differ.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("geosteer-mkgeo: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns `Ok(false)` only when `--check` found stale or missing files.
fn run(cli: &Cli) -> Result<bool> {
    let text = fs::read_to_string(&cli.input)
        .with_context(|| format!("reading {}", cli.input.display()))?;
    let source = cli.input.display().to_string();
    let generated = generate(&text, &source)?;
    let outputs = [(CITY_FILE, &generated.city), (ASN_FILE, &generated.asn)];

    if cli.check {
        let mut up_to_date = true;
        for (name, bytes) in outputs {
            let path = cli.out_dir.join(name);
            match fs::read(&path) {
                Ok(on_disk) if on_disk == *bytes => {
                    println!("{}: up to date ({} bytes)", path.display(), bytes.len());
                }
                Ok(on_disk) => {
                    up_to_date = false;
                    println!(
                        "{}: DIFFERS from {} (on disk {} bytes, regenerated {} bytes)",
                        path.display(),
                        source,
                        on_disk.len(),
                        bytes.len()
                    );
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    up_to_date = false;
                    println!("{}: MISSING", path.display());
                }
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            }
        }
        if !up_to_date {
            println!("run `cargo run -p geosteer-mkgeo` and commit the result");
        }
        return Ok(up_to_date);
    }

    fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("creating {}", cli.out_dir.display()))?;
    for (name, bytes) in outputs {
        let path = cli.out_dir.join(name);
        write_atomically(&path, bytes)?;
        println!("wrote {} ({} bytes)", path.display(), bytes.len());
    }
    let s = &generated.stats;
    println!(
        "{} networks ({} IPv4, {} IPv6); city db: {} nodes, {} distinct records; \
         asn db: {} networks, {} nodes",
        s.networks, s.ipv4, s.ipv6, s.city_nodes, s.city_records, s.asn_networks, s.asn_nodes
    );
    Ok(true)
}
