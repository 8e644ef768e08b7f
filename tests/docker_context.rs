//! The container image's build stage gets exactly what its `COPY` lines copy, and cargo must be
//! able to load the whole workspace from that: the root Cargo.toml is a workspace
//! (`tools/mkgeo` is a member), and cargo reads every member's manifest and checks Cargo.lock
//! against all of them even when the Dockerfile builds only `--bin geosteer`. A member missing
//! from the build context breaks `docker build` while every other test still passes, so this
//! test lays out the build stage's /src as the Dockerfile does and runs cargo there (offline,
//! `--locked`, resolving the dependency graph against the local registry cache).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a file, or a directory recursively (the repository holds no symlinks there).
fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// Sources and destination of every build-stage `COPY` (not `COPY --from=`), in order.
fn build_copies() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let mut in_builder = false;
    let mut copies = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with("FROM ") {
            in_builder = l.ends_with(" AS builder");
        } else if in_builder && l.starts_with("COPY ") && !l.contains("--from") {
            let mut parts: Vec<String> = l.split_whitespace().skip(1).map(String::from).collect();
            let dest = parts.pop().unwrap();
            copies.push((parts, dest));
        }
    }
    copies
}

#[test]
fn docker_build_context_holds_the_whole_workspace() {
    let copies = build_copies();
    assert!(!copies.is_empty(), "no build-stage COPY in the Dockerfile");
    let ctx = tempfile::tempdir().unwrap();
    let src = ctx.path().join("src-root");
    for (sources, dest) in &copies {
        for s in sources {
            let from = repo().join(s);
            assert!(from.exists(), "COPY source {s} missing");
            // COPY a b ./ puts a and b in ./; COPY dir/ dir/ copies dir's contents into dir/.
            let to = if from.is_dir() {
                src.join(dest)
            } else {
                src.join(dest).join(from.file_name().unwrap())
            };
            copy(&from, &to);
        }
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The image builds for Linux/glibc on this architecture; crates for other platforms
    // (Windows console support and the like) are never downloaded, so offline they are absent.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(&cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &platform])
        .current_dir(&src)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo cannot load the workspace from the Dockerfile's build context \
         (add the missing path to the build-stage COPY lines and to \
         deploy/docker/Dockerfile.dockerignore):\n{stderr}"
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every workspace member of the repository is loaded there, and the server binary the
    // Dockerfile builds is among the targets.
    let members = meta["workspace_members"].as_array().unwrap();
    let ours = Command::new(&cargo)
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(ours.status.success());
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    assert_eq!(
        members.len(),
        ours["workspace_members"].as_array().unwrap().len(),
        "workspace members in the build context: {members:?}"
    );
    let has_server_bin = meta["packages"].as_array().unwrap().iter().any(|p| {
        p["name"] == "geosteer"
            && p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "geosteer" && t["kind"][0] == "bin")
    });
    assert!(
        has_server_bin,
        "no geosteer binary target in the build context"
    );
}
