//! Reports: the terminal table, and with `--report DIR` report.json, report.md and SVG plots.

pub mod compare;
pub mod model;
pub mod plots;
pub mod table;

use model::Report;
use std::path::Path;

/// Writes report.json, report.md and the plots into `dir`.
pub fn write_dir(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("create report dir {}: {e}", dir.display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let plots = plots::write_all(r, dir)?;
    let mut md = table::markdown(r);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in plots {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            md.push_str(&format!("![{name}]({name})\n"));
        }
    }
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}
