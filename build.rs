//! Build script: the git commit `inbound --version` names. `$INBOUND_GIT_COMMIT` wins (an image
//! build has no .git: `--build-arg INBOUND_GIT_COMMIT=$(git rev-parse --short=12 HEAD)`), then
//! `git rev-parse`; without either (a source tarball, no git installed) the commit is "unknown"
//! and the build goes on.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=INBOUND_GIT_COMMIT");
    let commit = std::env::var("INBOUND_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: a commit or checkout rewrites this worktree's HEAD reflog.
            for path in ["HEAD", "logs/HEAD"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            Some(if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=INBOUND_GIT_COMMIT={commit}");
}
