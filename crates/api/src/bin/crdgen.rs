//! Writes Muster's CRDs to a directory (default `config/crd`), or with `--check` fails when the
//! files there differ from what the types generate, so CI catches a forgotten `make crds`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from("config/crd");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (DIR defaults to config/crd)");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = Vec::new();
    for crd in muster_api::crd::all() {
        let path = dir.join(muster_api::crd::file_name(&crd));
        let want = muster_api::crd::to_yaml(&crd);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, want))
            {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "crdgen: these CRDs differ from the Rust types; run `make crds` and commit:\n  {}",
            stale.join("\n  ")
        );
        ExitCode::FAILURE
    }
}
