//! Reading the parts callgrind dumps: which thread, what triggered the
//! dump, and how many instructions (`Ir`) it counted.
//!
//! This file uses nothing but std, so that `tools/tests/` can include it
//! and check it on a small fixture.

/// The header and totals of one callgrind output file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// Valgrind's thread number (`thread:`; 1 is the main thread), if
    /// given.
    pub thread: Option<u32>,
    /// What made callgrind write it (`desc: Trigger: ...`), e.g.
    /// `--dump-before=isocall::bench::instr::instr_mark_end_client`, or
    /// `Program termination`.
    pub trigger: String,
    /// Instructions executed (the `Ir` event of `summary:` or `totals:`).
    pub instructions: u64,
}

/// Parses one callgrind output file.
///
/// # Errors
///
/// The text has no `events:` line naming `Ir`, or no `summary:` /
/// `totals:` line with a count for it.
pub fn parse(text: &str) -> Result<Part, String> {
    let mut part = Part::default();
    let mut ir_column = None;
    let mut total = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("thread:") {
            part.thread = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("desc: Trigger:") {
            part.trigger = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("events:") {
            ir_column = v.split_whitespace().position(|e| e == "Ir");
        } else if let Some(v) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            let col = ir_column.ok_or("a summary before the events: line")?;
            // Callgrind leaves out trailing zero counts.
            let n = match v.split_whitespace().nth(col) {
                Some(n) => n
                    .parse::<u64>()
                    .map_err(|e| format!("summary {v:?}: {e}"))?,
                None => 0,
            };
            // `summary:` and `totals:` agree; keep the first.
            total.get_or_insert(n);
        }
    }
    if ir_column.is_none() {
        return Err("no events: line with Ir (not a callgrind output file?)".into());
    }
    part.instructions = total.ok_or("no summary: or totals: line")?;
    Ok(part)
}

/// The name of the function whose entry triggered a `--dump-before` part,
/// if it is one.
pub fn dumped_before(part: &Part) -> Option<&str> {
    part.trigger.strip_prefix("--dump-before=")
}

/// The instructions of the one part dumped before entering a function
/// whose name ends with `marker`.
///
/// # Errors
///
/// No such part, or more than one.
pub fn dumped_count(parts: &[Part], marker: &str) -> Result<u64, String> {
    let found: Vec<&Part> = parts
        .iter()
        .filter(|p| dumped_before(p).is_some_and(|f| f.ends_with(marker)))
        .collect();
    match found.as_slice() {
        [p] => Ok(p.instructions),
        [] => Err(format!("no callgrind dump before {marker}")),
        _ => Err(format!("{} callgrind dumps before {marker}", found.len())),
    }
}
