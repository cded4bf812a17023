//! `lifeboat backup …`: export, import and list backups directly in a datastore
//! directory, for offline storage (tape or any traditional backup system) and
//! disaster recovery. Safe while the controller runs: export and list only
//! read, and import writes the datastore the way a backup does (atomically).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backup::archive::{self, ArchiveError, ExportStats, Progress};
use crate::backup::{BackupId, BackupMode, Datastore, Manifest, VmUuid};

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
    let store = open_datastore(&args.datastore)?;
    if !store.list_backups(&args.vm)?.contains(&args.backup) {
        let (vm, id, dir) = (&args.vm, &args.backup, args.datastore.display());
        bail!("there is no complete backup {vm}/{id} in {dir} (see `lifeboat backup list`)");
    }
    let bar = progress_bar(None);
    let export_to =
        |out: &mut dyn Write| archive::export_backup(&store, &args.vm, &args.backup, out, &bar);
    let stats = if args.output == Path::new("-") {
        export_to(&mut BufWriter::with_capacity(1 << 20, io::stdout().lock())).map_err(Into::into)
    } else {
        write_new_file(&args.output, export_to)
    };
    bar.finish_and_clear();
    stats.with_context(|| format!("cannot export backup {}/{}", args.vm, args.backup))
}

fn import(args: &ImportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_datastore(&args.datastore)?;
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

fn import_one(store: &Datastore, file: &Path) -> anyhow::Result<(VmUuid, BackupId)> {
    let (input, len): (Box<dyn Read>, _) = if file == Path::new("-") {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(f), len)
    };
    let bar = progress_bar(len);
    let mut input = BufReader::with_capacity(1 << 20, input);
    let imported = archive::import_archive(store, &mut input, &bar);
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
    let store = open_datastore(&args.datastore)?;
    let backups = match &args.vm {
        Some(vm) => (store.list_backups(vm)?.into_iter())
            .map(|id| (vm.clone(), id))
            .collect(),
        None => store.list_all()?,
    };
    writeln!(
        out,
        "{:<36}  {:<20}  {:<11}  {:>5}  {:>11}  NAME",
        "VM", "BACKUP", "MODE", "DISKS", "SIZE"
    )?;
    for (vm, id) in backups {
        // A broken manifest is shown, not fatal: the listing is how one finds it.
        match Manifest::read(&store.backup_dir(&vm, &id)) {
            Ok(m) => {
                let mode = match m.backup.mode {
                    BackupMode::Full => "full",
                    BackupMode::Incremental => "incremental",
                };
                let size = BinaryBytes(m.disks.iter().map(|d| d.size_bytes).sum());
                let disks = m.disks.len();
                let name = &m.vm.name;
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

/// Opens an existing datastore; a mistyped path must not create an empty one.
fn open_datastore(dir: &Path) -> anyhow::Result<Datastore> {
    if !dir.join("vm").is_dir() || !dir.join(".chunks").is_dir() {
        bail!(
            "{} is not a Lifeboat datastore (no vm/ and .chunks/ in it); name one with --datastore",
            dir.display()
        );
    }
    Datastore::create_or_open(dir)
        .with_context(|| format!("cannot open datastore {}", dir.display()))
}

/// Writes `path` through a temp file beside it, renamed into place once
/// complete and synced: a failed export leaves no half archive behind.
fn write_new_file<T>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T, ArchiveError>,
) -> anyhow::Result<T> {
    if fs::symlink_metadata(path).is_ok() {
        bail!("{} already exists; not overwriting it", path.display());
    }
    let name = path.file_name().and_then(|n| n.to_str());
    let Some(name) = name else {
        bail!("{} is not a file name", path.display());
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let file =
        File::create_new(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let value = write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        anyhow::Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Progress for ProgressBar {
    fn phase(&self, what: &str, total: Option<u64>) {
        self.set_message(what.to_string());
        if let Some(total) = total {
            self.set_style(bar_style(true));
            self.set_length(total);
            self.set_position(0);
            self.reset_eta();
        }
    }

    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }
}

/// A bar on stderr with bytes, percent, rate and ETA; drawn only on a
/// terminal, where a person watches it, never into a pipe or a log file.
fn progress_bar(total: Option<u64>) -> ProgressBar {
    let target = match io::stderr().is_terminal() {
        true => ProgressDrawTarget::stderr(),
        false => ProgressDrawTarget::hidden(),
    };
    let bar = ProgressBar::with_draw_target(total, target);
    bar.set_style(bar_style(total.is_some()));
    bar
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
    use crate::backup::{archive::sample_backup, TestDir};
    use clap::Parser;

    #[derive(Parser)]
    struct BackupCli {
        #[command(subcommand)]
        cmd: BackupCmd,
    }

    fn parse(args: &[&str]) -> Result<BackupCmd, clap::Error> {
        let argv = std::iter::once("lifeboat-backup").chain(args.iter().copied());
        BackupCli::try_parse_from(argv).map(|cli| cli.cmd)
    }

    fn text(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    #[test]
    fn export_import_and_list_through_the_cli() {
        let dir = TestDir::new("cli-backup");
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let (vm, id) = sample_backup(&Datastore::create_or_open(&src).unwrap());
        Datastore::create_or_open(&dst).unwrap();
        let file = dir.join("web01.lbarchive");
        let export_cmd = [
            "export",
            "--datastore",
            text(&src),
            "--vm",
            vm.as_str(),
            "--backup",
            id.as_str(),
            "--output",
            text(&file),
        ];
        let Ok(BackupCmd::Export(args)) = parse(&export_cmd) else {
            panic!("export args")
        };
        let stats = export(&args).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().len(), stats.archive_bytes);
        let err = export(&args).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        let names: Vec<_> = fs::read_dir(&*dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temp file left: {names:?}");

        let import_cmd = ["import", "--datastore", text(&dst), text(&file)];
        let Ok(BackupCmd::Import(args)) = parse(&import_cmd) else {
            panic!("import args")
        };
        let mut out = Vec::new();
        import(&args, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(&format!("imported backup {vm}/{id}")), "{out}");
        let err = import(&args, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("1 of 1"), "{err:#}");

        let Ok(BackupCmd::List(args)) =
            parse(&["list", "--datastore", text(&dst), "--vm", vm.as_str()])
        else {
            panic!("list args")
        };
        let mut out = Vec::new();
        list(&args, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.contains(id.as_str()) && out.contains("web01") && out.contains("full"),
            "{out}"
        );
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
        let dir = TestDir::new("cli-bad");
        let Ok(BackupCmd::List(args)) = parse(&["list", "--datastore", text(&dir.join("nope"))])
        else {
            panic!("list args")
        };
        let err = list(&args, &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("not a Lifeboat datastore"),
            "{err:#}"
        );
        assert!(
            !dir.join("nope").exists(),
            "a mistyped datastore is not created"
        );
    }
}
