//! `inbound route --explain`: how a message would be attributed, threaded and routed, without
//! storing it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{load_config, runtime};

pub fn explain(
    config: Option<&PathBuf>,
    json: bool,
    mail_from: Option<&str>,
    rcpt: Option<&str>,
    message: &PathBuf,
) -> Result<ExitCode> {
    let cfg = std::sync::Arc::new(load_config(config)?);
    let raw = std::fs::read(message).with_context(|| format!("reading {}", message.display()))?;
    let header_from = crate::pipeline::parse::summarize(&raw).from;
    let mail_from = mail_from.unwrap_or(&header_from);
    let e = runtime()?
        .block_on(crate::pipeline::explain(cfg, &raw, mail_from, rcpt))
        .context("explaining the message")?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &e)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let a = &e.attribution;
    writeln!(out, "inbox:        {}", e.inbox)?;
    writeln!(out, "subject:      {}", e.subject)?;
    writeln!(
        out,
        "attributed:   {}{} (method: {})",
        a.name
            .as_deref()
            .map(|n| format!("{n} "))
            .unwrap_or_default(),
        format_args!("<{}>", a.email),
        a.method
    )?;
    if let Some(f) = &a.forwarded_by {
        writeln!(out, "forwarded by: {f}")?;
    }
    writeln!(
        out,
        "thread:       {} ({})",
        e.thread["decision"].as_str().unwrap_or(""),
        e.thread["reason"].as_str().unwrap_or("")
    )?;
    writeln!(
        out,
        "rule:         {}",
        e.rule.as_deref().unwrap_or("(none matched: unassigned)")
    )?;
    writeln!(
        out,
        "assignment:   {} ({})",
        e.assignment["assignee"].as_str().unwrap_or("(unassigned)"),
        e.assignment["how"].as_str().unwrap_or("")
    )?;
    match &e.ticket {
        Some(t) => writeln!(
            out,
            "ticket:       yes: pipeline {}, stage {}, priority {}, owner {}",
            t.pipeline,
            t.stage,
            t.priority,
            t.owner.as_deref().unwrap_or("-")
        )?,
        None => writeln!(out, "ticket:       no")?,
    }
    if let Some(reason) = &e.automatic {
        writeln!(out, "automatic:    {reason}")?;
    }
    writeln!(
        out,
        "verification: {}",
        e.verification
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into())
    )?;
    Ok(ExitCode::SUCCESS)
}
