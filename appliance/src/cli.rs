//! `lifeboat backup …`: export, import and list backups directly in a datastore
//! directory, for offline storage (tape or any traditional backup system) and
//! disaster recovery. Safe while the controller runs: export and list only
//! read, and import writes the datastore the way a backup does (atomically).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_os::durable::AtomicWrite;

use lifeboat_core::model::{BackupId, ExportStats, Progress, VmUuid};
use lifeboat_core::ops::offline::{OfflineDatastore, OfflineError};

/// The controller's built-in datastore, as `lifeboat serve` lays it out by
/// default from the same working directory.
pub const DEFAULT_DATASTORE_DIR: &str = "./lifeboat-data/datastores/local";

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Write one backup as a self-contained archive: manifest, indexes and
    /// every chunk they use, for tape or any traditional backup system.
    Export(ExportArgs),
    /// Import archives written by `export`. Each backup appears complete or
    /// not at all; a backup that already exists is refused.
    Import(ImportArgs),
    /// List the complete backups in a datastore.
    List(ListArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// The datastore directory.
    #[arg(long, default_value = DEFAULT_DATASTORE_DIR)]
    datastore: PathBuf,
    /// The VM's UUID.
    #[arg(long)]
    vm: VmUuid,
    /// The backup's id: its start time, e.g. 2026-11-25T20:30:00Z.
    #[arg(long)]
    backup: BackupId,
    /// The archive to write, by convention `*.lbarchive`; it must not exist.
    /// `-` writes to standard output (e.g. into `dd of=/dev/nst0`).
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The datastore directory.
    #[arg(long, default_value = DEFAULT_DATASTORE_DIR)]
    datastore: PathBuf,
    /// Archives to import, in order; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// The datastore directory.
    #[arg(long, default_value = DEFAULT_DATASTORE_DIR)]
    datastore: PathBuf,
    /// Only this VM's backups.
    #[arg(long)]
    vm: Option<VmUuid>,
}

pub fn run(cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Export(args) => {
            let stats = export(&args)?;
            // On stderr: stdout may be the archive itself.
            eprintln!(
                "exported backup {}/{}: {} indexes, {} chunks, {} written",
                args.vm,
                args.backup,
                stats.index_files,
                stats.chunks,
                BinaryBytes(stats.archive_bytes)
            );
            Ok(())
        }
        BackupCmd::Import(args) => import(&args, &mut io::stdout().lock()),
        BackupCmd::List(args) => list(&args, &mut io::stdout().lock()),
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<ExportStats> {
    let store = OfflineDatastore::open(&args.datastore)?;
    store.check_exportable(&args.vm, &args.backup)?;
    let bar = progress_bar(None);
    let export_to = |out: &mut dyn Write| store.export(&args.vm, &args.backup, out, &bar);
    let stats = if args.output == Path::new("-") {
        export_to(&mut BufWriter::with_capacity(1 << 20, io::stdout().lock())).map_err(Into::into)
    } else {
        write_new_file(&args.output, export_to)
    };
    bar.finish_and_clear();
    stats.with_context(|| format!("cannot export backup {}/{}", args.vm, args.backup))
}

fn import(args: &ImportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = OfflineDatastore::open(&args.datastore)?;
    let mut failed = 0;
    for file in &args.files {
        match import_one(&store, file) {
            Ok((vm, id)) => writeln!(out, "imported backup {vm}/{id} from {}", file.display())?,
            Err(e) => {
                failed += 1;
                eprintln!("error: cannot import {}: {e:#}", file.display());
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} archives were not imported",
            args.files.len()
        );
    }
    Ok(())
}

fn import_one(store: &OfflineDatastore, file: &Path) -> anyhow::Result<(VmUuid, BackupId)> {
    let (input, len): (Box<dyn Read>, _) = if file == Path::new("-") {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(f), len)
    };
    let bar = progress_bar(len);
    let mut input = BufReader::with_capacity(1 << 20, input);
    let imported = store.import(&mut input, &bar);
    bar.finish_and_clear();
    let imported = imported?;
    if file == Path::new("-") {
        // Read what follows the archive's end (tar padding): a writer into
        // the pipe that is still writing must not fail on a closed pipe.
        io::copy(&mut input, &mut io::sink()).context("reading standard input")?;
    }
    Ok(imported)
}

fn list(args: &ListArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = OfflineDatastore::open(&args.datastore)?;
    writeln!(
        out,
        "{:<36}  {:<20}  {:<11}  {:>5}  {:>11}  NAME",
        "VM", "BACKUP", "MODE", "DISKS", "SIZE"
    )?;
    for listed in store.list(args.vm.as_ref())? {
        let (vm, id) = (&listed.vm, &listed.id);
        match listed.summary {
            Ok(line) => {
                let mode = if line.full { "full" } else { "incremental" };
                let size = BinaryBytes(line.size_bytes);
                let (disks, name) = (line.disks, &line.name);
                writeln!(
                    out,
                    "{vm}  {id}  {mode:<11}  {disks:>5}  {size:>11}  {name}"
                )?
            }
            Err(e) => writeln!(out, "{vm}  {id}  unreadable: {e}")?,
        }
    }
    Ok(())
}

/// Writes a new `path` atomically: a failed export leaves no half archive
/// behind, and an existing file is never overwritten.
fn write_new_file<T>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T, OfflineError>,
) -> anyhow::Result<T> {
    Ok(AtomicWrite::new(0o644)
        .no_replace()
        .write_with(path, write)?)
}

/// The terminal progress bar export and import report to.
struct Bar(ProgressBar);

impl Bar {
    fn finish_and_clear(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, what: &str, total: Option<u64>) {
        self.0.set_message(what.to_string());
        if let Some(total) = total {
            self.0.set_style(bar_style(true));
            self.0.set_length(total);
            self.0.set_position(0);
            self.0.reset_eta();
        }
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// A bar on stderr with bytes, percent, rate and ETA; drawn only on a
/// terminal, where a person watches it, never into a pipe or a log file.
fn progress_bar(total: Option<u64>) -> Bar {
    let target = match io::stderr().is_terminal() {
        true => ProgressDrawTarget::stderr(),
        false => ProgressDrawTarget::hidden(),
    };
    let bar = ProgressBar::with_draw_target(total, target);
    bar.set_style(bar_style(total.is_some()));
    Bar(bar)
}

fn bar_style(total_known: bool) -> ProgressStyle {
    let template = match total_known {
        true => "{msg:16} [{wide_bar}] {bytes}/{total_bytes} {percent:>3}% {binary_bytes_per_sec} ETA {eta}",
        false => "{msg:16} {bytes} {binary_bytes_per_sec} {elapsed}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::fs;

    #[derive(Parser)]
    struct BackupCli {
        #[command(subcommand)]
        cmd: BackupCmd,
    }

    fn parse(args: &[&str]) -> Result<BackupCmd, clap::Error> {
        let argv = std::iter::once("lifeboat-backup").chain(args.iter().copied());
        BackupCli::try_parse_from(argv).map(|cli| cli.cmd)
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lifeboat-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_file_appears_whole_or_not_at_all_and_is_never_overwritten() {
        let dir = scratch("new-file");
        let file = dir.join("a.lbarchive");
        write_new_file(&file, |out| {
            out.write_all(b"whole").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"whole");
        let err = write_new_file(&file, |_| Ok(())).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        let failed = dir.join("b.lbarchive");
        let not_a_datastore = || OfflineDatastore::open(&dir.join("nope")).map(|_| ());
        assert!(write_new_file(&failed, |_| not_a_datastore()).is_err());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_arguments_and_paths_are_clear_errors() {
        let Ok(BackupCmd::List(args)) = parse(&["list"]) else {
            panic!("list args")
        };
        assert_eq!(args.datastore, Path::new(DEFAULT_DATASTORE_DIR));
        let bad_vm = [
            "export",
            "--vm",
            "../x",
            "--backup",
            "2026-11-25T20:30:00Z",
            "-o",
            "x",
        ];
        assert!(parse(&bad_vm).is_err());
        assert!(parse(&["import"]).is_err(), "at least one archive");
        let dir = scratch("bad");
        let nope = dir.join("nope");
        let Ok(BackupCmd::List(args)) = parse(&["list", "--datastore", nope.to_str().unwrap()])
        else {
            panic!("list args")
        };
        let err = list(&args, &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("not a Lifeboat datastore"),
            "{err:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
