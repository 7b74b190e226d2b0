//! Classification results as rows (CSV or JSON lines), streamed to a file while the
//! work goes on so an interrupted run keeps everything done so far, and read back so a
//! rerun with `--resume` skips what is done.
//!
//! Rows go to `OUT.partial` (each row one write, flushed to disk at least once a
//! second); when the run completes the file is renamed to `OUT`. A resumed run reads
//! `OUT.partial`, or `OUT` if a completed run left one, keeps the rows of patches that
//! were classified, drops failed ones (they are retried) and a torn last line, then
//! appends.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::provenance::{self, Provenance};
use crate::error::{Error, Result};
use crate::tasks::classify::PatchResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// [`csv_header`]: file, probability, class, error, then the provenance columns.
    Csv,
    /// One JSON object per line: file, probability, class, class_index, logits (or
    /// error), then the provenance fields.
    JsonLines,
}

/// The CSV header: the result's columns, then what made it ([`provenance::COLUMNS`]).
pub fn csv_header() -> String {
    let mut h = vec!["file", "probability", "class", "error"];
    h.extend(provenance::COLUMNS);
    h.join(",")
}

/// One result as a line of text, newline included, with the record of what made it.
pub fn format_row(format: RowFormat, r: &PatchResult, made_by: &Provenance) -> String {
    match format {
        RowFormat::Csv => {
            let file = r.source.to_string();
            let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
            let mut record = match &r.outcome {
                Ok(p) => vec![file, format!("{:.6}", p.probability), p.class_name.clone(), String::new()],
                Err(e) => vec![file, String::new(), String::new(), e.clone()],
            };
            record.extend(made_by.cells().iter().map(|c| c.to_string()));
            w.write_record(&record).expect("writing to memory");
            String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 in, UTF-8 out")
        }
        RowFormat::JsonLines => format!("{}\n", row_json(r, made_by)),
    }
}

/// One result as JSON: file, probability, class, class_index, logits (or file and
/// error), then the provenance fields. The rows of `--format jsonl` and the array of
/// `--format json`.
pub fn row_json(r: &PatchResult, made_by: &Provenance) -> serde_json::Value {
    let file = r.source.to_string();
    let mut v = match &r.outcome {
        Ok(p) => {
            serde_json::json!({"file": file, "probability": p.probability, "class": p.class_name, "class_index": p.class_index, "logits": p.logits})
        }
        Err(e) => serde_json::json!({"file": file, "error": e}),
    };
    if let (Some(row), serde_json::Value::Object(record)) = (v.as_object_mut(), serde_json::to_value(made_by).expect("plain strings")) {
        row.extend(record);
    }
    v
}

/// A row read back: which patch, whether it was classified, and what made it (None:
/// a file from before results recorded it).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    file: String,
    ok: bool,
    made_by: Option<Provenance>,
    line: String,
}

/// Parses the complete lines of an earlier run's output; a torn last line (no newline,
/// or not parseable: the process died mid-write) is left out. CSV columns are found
/// by the header's names.
fn parse_rows(format: RowFormat, text: &str) -> Vec<Row> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for line in complete.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match format {
            RowFormat::Csv => {
                let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
                let Some(Ok(rec)) = r.records().next() else { continue };
                if rec.get(0) == Some("file") && rec.get(1) == Some("probability") {
                    columns = rec.iter().map(str::to_string).collect();
                    continue;
                }
                let cell = |name: &str| columns.iter().position(|c| c == name).and_then(|i| rec.get(i)).map(str::to_string);
                let made_by = provenance::COLUMNS.iter().map(|c| cell(c)).collect::<Option<Vec<String>>>().map(|c| Provenance {
                    model: c[0].clone(),
                    model_version: c[1].clone(),
                    model_sha256: c[2].clone(),
                    backend: c[3].clone(),
                    settings: c[4].clone(),
                    edgemed: c[5].clone(),
                    time: c[6].clone(),
                });
                match (cell("file"), cell("error")) {
                    (Some(file), Some(error)) if rec.len() == columns.len() => Some((file, error.is_empty(), made_by)),
                    _ => None,
                }
            }
            RowFormat::JsonLines => serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| {
                let file = v.get("file")?.as_str()?.to_string();
                let made_by = serde_json::from_value::<Provenance>(v.clone()).ok();
                Some((file, v.get("error").is_none() && v.get("probability").is_some(), made_by))
            }),
        };
        if let Some((file, ok, made_by)) = parsed {
            rows.push(Row { file, ok, made_by, line: format!("{line}\n") });
        }
    }
    rows
}

/// An output file being streamed to.
pub struct ResultStream {
    file: std::fs::File,
    partial: PathBuf,
    path: PathBuf,
    format: RowFormat,
    made_by: Provenance,
    last_sync: Instant,
}

pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

impl ResultStream {
    /// Starts `path` afresh, or with `resume` continues an earlier run's output, which
    /// must have been made by the same model, backend and settings (`made_by`). Returns
    /// the stream and the patches already classified (to skip).
    pub fn open(path: &Path, format: RowFormat, resume: bool, made_by: &Provenance) -> Result<(Self, HashSet<String>)> {
        let partial = partial_path(path);
        let mut kept: Vec<Row> = Vec::new();
        if resume {
            let earlier = if partial.is_file() {
                Some(&partial)
            } else if path.is_file() {
                Some(&path.to_path_buf())
            } else {
                None
            };
            if let Some(src) = earlier {
                let text = std::fs::read_to_string(src).map_err(|e| Error::io(src, e))?;
                let rows = parse_rows(format, &text);
                let header_only = text.lines().all(|l| l.trim().is_empty() || l.starts_with("file,probability,"));
                edgemed_onnx::ensure!(
                    !rows.is_empty() || header_only,
                    Error::Invalid(format!("{}: not an edgemed-run {:?} result file; cannot resume from it", src.display(), format))
                );
                for r in &rows {
                    match &r.made_by {
                        Some(earlier) => made_by.check_continues(earlier, src)?,
                        None => {
                            return Err(Error::Invalid(format!(
                                "{}: its rows do not say which model made them (an older edgemed wrote it); resuming could mix two models' answers (write to another file, or pass --force to start it afresh)",
                                src.display()
                            )))
                        }
                    }
                }
                let mut seen = HashSet::new();
                kept = rows.into_iter().filter(|r| r.ok && seen.insert(r.file.clone())).collect();
            }
        }
        // The kept rows are written to a fresh partial file first (atomically), so a
        // crash while resuming loses nothing either.
        let mut head = String::new();
        if format == RowFormat::Csv {
            head.push_str(&csv_header());
            head.push('\n');
        }
        kept.iter().for_each(|r| head.push_str(&r.line));
        crate::fsutil::write_atomic(&partial, head.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&partial).map_err(|e| Error::io(&partial, e))?;
        let done = kept.into_iter().map(|r| r.file).collect();
        Ok((ResultStream { file, partial, path: path.to_path_buf(), format, made_by: made_by.clone(), last_sync: Instant::now() }, done))
    }

    pub fn write(&mut self, r: &PatchResult) -> Result<()> {
        self.file.write_all(format_row(self.format, r, &self.made_by).as_bytes()).map_err(|e| Error::io(&self.partial, e))?;
        // Each row is one write (a killed process keeps it); syncing bounds what a power cut can take.
        if self.last_sync.elapsed() > Duration::from_secs(1) {
            self.file.sync_data().map_err(|e| Error::io(&self.partial, e))?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// The run completed: flush and rename the partial file into place.
    pub fn finish(self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.partial, e))?;
        drop(self.file);
        std::fs::rename(&self.partial, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::patch::PatchSource;
    use crate::tasks::classify::Prediction;

    fn result(file: &str, ok: bool) -> PatchResult {
        PatchResult {
            source: PatchSource::File(file.into()),
            outcome: if ok {
                Ok(Prediction { probability: 0.25, class_index: 0, class_name: "normal".into(), logits: vec![1.0, -0.5] })
            } else {
                Err(format!("{file}: not a readable image: bad, \"quoted\""))
            },
        }
    }

    fn made_by(sha: &str) -> Provenance {
        Provenance {
            model: "m.onnx".into(),
            model_version: "0".into(),
            model_sha256: sha.into(),
            backend: "edgemed-int8 (cpu)".into(),
            settings: "crop=95".into(),
            edgemed: "0.1.0".into(),
            time: "2026-12-04T00:00:00Z".into(),
        }
    }

    #[test]
    fn rows_round_trip_and_torn_lines_are_dropped() {
        let m = made_by("aa");
        for format in [RowFormat::Csv, RowFormat::JsonLines] {
            let mut text = if format == RowFormat::Csv { format!("{}\n", csv_header()) } else { String::new() };
            text.push_str(&format_row(format, &result("a, b.png", true), &m));
            text.push_str(&format_row(format, &result("c.png", false), &m));
            let torn = format_row(format, &result("d.png", true), &m);
            text.push_str(&torn[..torn.len() / 2]);
            let rows = parse_rows(format, &text);
            assert_eq!(
                rows.iter().map(|r| (r.file.as_str(), r.ok, r.made_by.as_ref())).collect::<Vec<_>>(),
                vec![("a, b.png", true, Some(&m)), ("c.png", false, Some(&m))],
                "{format:?}"
            );
        }
    }

    #[test]
    fn resume_keeps_classified_rows_and_retries_failures() {
        let dir = std::env::temp_dir().join(format!("edgemed-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.csv");
        let m = made_by("aa");
        let (mut s, done) = ResultStream::open(&out, RowFormat::Csv, false, &m).unwrap();
        assert!(done.is_empty());
        s.write(&result("a.png", true)).unwrap();
        s.write(&result("b.png", false)).unwrap();
        drop(s); // interrupted: no finish
        assert!(!out.exists());
        // Another model cannot continue it, and the partial file is left as it was.
        let before = std::fs::read(partial_path(&out)).unwrap();
        let e = ResultStream::open(&out, RowFormat::Csv, true, &made_by("bb")).err().unwrap().to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(partial_path(&out)).unwrap(), before);
        let (mut s, done) = ResultStream::open(&out, RowFormat::Csv, true, &m).unwrap();
        assert_eq!(done, HashSet::from(["a.png".to_string()]));
        s.write(&result("b.png", true)).unwrap();
        s.finish().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!partial_path(&out).exists());
        // Resuming a completed run skips everything.
        let (s, done) = ResultStream::open(&out, RowFormat::Csv, true, &m).unwrap();
        assert_eq!(done.len(), 2);
        s.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
        // A file that is not ours is refused, not overwritten; so is one without provenance.
        std::fs::write(&out, "hello\nworld\n").unwrap();
        assert!(ResultStream::open(&out, RowFormat::JsonLines, true, &m).is_err());
        std::fs::write(&out, "file,probability,class,error\na.png,0.5,normal,\n").unwrap();
        let e = ResultStream::open(&out, RowFormat::Csv, true, &m).err().unwrap().to_string();
        assert!(e.contains("do not say which model"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
