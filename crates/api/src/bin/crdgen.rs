//! Writes Muster's CRDs to a directory (default `config/crd`) and the API reference rendered from
//! their schemas (default `docs/api-reference.md`), or with `--check` fails when the files there
//! differ from what the types generate, so CI catches a forgotten `make crds`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [--check] [--docs FILE] [DIR]   \
(DIR defaults to config/crd, FILE to docs/api-reference.md)";

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from("config/crd");
    let mut docs = PathBuf::from("docs/api-reference.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--docs" => match args.next() {
                Some(file) => docs = PathBuf::from(file),
                None => {
                    eprintln!("crdgen: --docs needs a file\n{USAGE}");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let crds = muster_api::crd::all();
    let mut outputs: Vec<(PathBuf, String)> = crds
        .iter()
        .map(|crd| {
            (
                dir.join(muster_api::crd::file_name(crd)),
                muster_api::crd::to_yaml(crd),
            )
        })
        .collect();
    outputs.push((docs, muster_api::reference::render(&crds)));

    let mut stale = Vec::new();
    for (path, want) in outputs {
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) = write(&path, &want) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "crdgen: these files differ from what the Rust types generate; run `make crds` and commit:\n  {}",
            stale.join("\n  ")
        );
        ExitCode::FAILURE
    }
}

fn write(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents)
}
