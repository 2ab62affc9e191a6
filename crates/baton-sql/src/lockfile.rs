//! The liveness locks of the conductors registered through a SQLite job board: a lock file per
//! conductor, which the kernel unlocks when the conductor's process dies.
//!
//! Every process that shares a SQLite file runs on one host (SQLite's own locking needs it), so
//! the kernel can tell whether a conductor is alive, as PostgreSQL's session advisory locks do
//! for a fleet (see `crate::liveness`). A board that registers a conductor holds an exclusive
//! `flock` on `<id>.lock` in a folder beside the database file ([`folder_of`]:
//! `<database>-conductors/`) for as long as the conductor stays registered. The lock belongs
//! to an open file that only this process holds (the standard library opens files
//! close-on-exec, so no child process inherits it): however the process ends, `SIGKILL`
//! included, the kernel lets the lock go with it. Before a claim, a board probes the lock files
//! and frees at once the claimed jobs of a conductor whose lock is free (see `SqliteJobBoard`).
//!
//! What makes a probe sound:
//!
//! - **A lock file is found free only once its conductor is gone.** It is created under a
//!   temporary name, locked, and only then renamed to its own name, so no probe ever finds the
//!   file of a conductor half-way through registering. A free lock file is a conductor that
//!   died, deregistered, or whose boards were all dropped.
//! - **No lock file tells nothing.** A conductor of an earlier release of baton (during a
//!   rolling upgrade), one whose lock could not be taken (a folder it cannot write, a file
//!   system whose locks do not exclude each other), and every conductor of an in-memory
//!   database have none: their jobs wait for their leases, as they always did.
//! - **A probe neither disturbs a live owner nor takes it for dead.** It asks for a shared lock
//!   without waiting: refused, the owner holds its exclusive lock and is alive; granted, the
//!   owner is gone, and the probe's lock goes as soon as its file is closed. Locks taken
//!   through two open files of one file refuse each other even inside one process (`flock`
//!   semantics), so a board also sees as alive a conductor that another board of its own
//!   process registered; a new lock checks that its file system keeps that promise, and is
//!   given up otherwise. An owner never waits for a probe: its file is locked before anyone
//!   can find it.
//! - **The boards of one process share one lock per conductor** (a process-wide table): a
//!   conductor registered through two boards keeps its lock until both let it go, where two
//!   locks of one file would refuse each other.
//! - **Dead stays dead.** A conductor's id is never used again, so what a probe found before a
//!   claim's transaction still holds inside it. The claim probes its finds once more inside
//!   the transaction all the same (holding the database's write lock, which a conductor's own
//!   claims need), in case a conductor deregistered and registered again meanwhile.
//!
//! Cleanup: a conductor that deregisters holding no claimed job deletes its file; one that
//! leaves claimed jobs behind (halted at its drain timeout) only lets its lock go, so that
//! another conductor frees those jobs at once, as a dead owner's. The claim that frees a dead
//! conductor's jobs deletes its row from `conductors` in the same transaction, and its lock
//! file once that committed (under an exclusive lock, after checking that the name is still
//! that file's). Temporary files left by a process that died while registering are deleted
//! after a minute.
//!
//! Network file systems are not supported, as they are not for SQLite itself: their locks may
//! be emulated, or local to one host.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use baton_core::ConductorId;

/// The folder that holds the lock files of the conductors of the database file `db`.
pub(crate) fn folder_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-conductors");
    PathBuf::from(name)
}

/// How old a temporary lock file must be before a probe deletes it: its process died between
/// creating it and giving it its name (which takes microseconds).
const STALE_TEMPORARY: Duration = Duration::from_secs(60);

/// What a probe found out about a conductor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Its lock is held.
    Alive,
    /// Its lock file exists and nobody holds it: it died or deregistered.
    Dead,
    /// No lock file, or one that cannot be probed: only its lease counts.
    Unknown,
}

/// A conductor's lock file, locked exclusively until dropped (closing the file unlocks it).
#[derive(Debug)]
struct Held {
    path: PathBuf,
    file: File,
}

impl Held {
    /// Creates `path` locked: under a temporary name in `folder`, locked, checked, then renamed.
    fn take(folder: &Path, path: &Path, id: ConductorId) -> io::Result<Self> {
        std::fs::create_dir_all(folder)?;
        let temporary = folder.join(format!(".{id}.{}.tmp", std::process::id()));
        let made = Self::lock_new(&temporary).and_then(|file| {
            std::fs::rename(&temporary, path)?;
            Ok(file)
        });
        match made {
            Ok(file) => Ok(Self {
                path: path.to_owned(),
                file,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                Err(e)
            }
        }
    }

    /// A new file at `path`, locked exclusively, once the file system showed that its locks
    /// exclude each other within one process (a shared lock through a second open file must
    /// be refused), which probes from this process rely on.
    fn lock_new(path: &Path) -> io::Result<File> {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "a new lock file is locked by another",
            ),
        })?;
        match File::open(path)?.try_lock_shared() {
            Err(TryLockError::WouldBlock) => {}
            Ok(()) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the file system's locks do not exclude each other",
                ))
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // For operators: which process holds it.
        writeln!(file, "{}", std::process::id())?;
        Ok(file)
    }

    /// Whether the file's name still leads to this file (an operator, or a board that found
    /// it free, may have deleted it).
    fn in_place(&self) -> bool {
        std::fs::metadata(&self.path)
            .ok()
            .zip(self.file.metadata().ok())
            .is_some_and(|(named, open)| same_file(&named, &open))
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    // No identity to compare: a file of this name is taken for this one.
    true
}

/// The locks this process holds, by path: shared by all its boards.
static HELD: LazyLock<Mutex<HashMap<PathBuf, Weak<Held>>>> = LazyLock::new(Mutex::default);

fn held() -> MutexGuard<'static, HashMap<PathBuf, Weak<Held>>> {
    // Each change is one insert or removal: a poisoned map is still a good one.
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Probes the lock file at `path`.
fn probe(path: &Path) -> Life {
    let Ok(file) = File::open(path) else {
        return Life::Unknown;
    };
    // Granted, the lock goes with `file` at the end of this function.
    match file.try_lock_shared() {
        Ok(()) => Life::Dead,
        Err(TryLockError::WouldBlock) => Life::Alive,
        Err(TryLockError::Error(_)) => Life::Unknown,
    }
}

/// The liveness locks of the conductors registered through one SQLite board (and its clones),
/// and the probes of everyone's. Its methods do file I/O: call them off the async runtime's
/// threads (`tokio::task::spawn_blocking`).
#[derive(Debug, Default)]
pub(crate) struct Locks {
    /// `None`: an in-memory database, whose conductors have no locks.
    folder: Option<PathBuf>,
    mine: Mutex<HashMap<ConductorId, Arc<Held>>>,
}

impl Locks {
    /// The locks of the conductors of the database file `db` (`None`: in memory).
    pub(crate) fn new(db: Option<&Path>) -> Self {
        Self {
            folder: db.map(folder_of),
            mine: Mutex::default(),
        }
    }

    fn mine(&self) -> MutexGuard<'_, HashMap<ConductorId, Arc<Held>>> {
        self.mine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, id: ConductorId) -> Option<PathBuf> {
        self.folder.as_ref().map(|f| f.join(format!("{id}.lock")))
    }

    /// Makes sure conductor `id` holds its lock: the one this board holds, or another board
    /// of this process holds, if its file is still in place; a new one otherwise. Answers
    /// whether it holds one (not for an in-memory database).
    ///
    /// # Errors
    /// The lock file could not be made: the conductor has no lock (its jobs wait for their
    /// leases) until a later call succeeds.
    pub(crate) fn keep(&self, id: ConductorId) -> io::Result<bool> {
        let (Some(folder), Some(path)) = (&self.folder, self.path(id)) else {
            return Ok(false);
        };
        if self.mine().get(&id).is_some_and(|h| h.in_place()) {
            return Ok(true);
        }
        // Under the process-wide table, so that two boards of this process never make two
        // locks of one conductor.
        let mut table = held();
        let lock = match table.get(&path).and_then(Weak::upgrade) {
            Some(h) if h.in_place() => h,
            _ => Arc::new(Held::take(folder, &path, id)?),
        };
        table.insert(path, Arc::downgrade(&lock));
        drop(table);
        self.mine().insert(id, lock);
        Ok(true)
    }

    /// Lets conductor `id`'s lock go, as far as this board holds it; with `delete`, its file
    /// is deleted first if no other board of this process holds it.
    pub(crate) fn release(&self, id: ConductorId, delete: bool) {
        let Some(lock) = self.mine().remove(&id) else {
            return;
        };
        let mut table = held();
        // Only this board held it: no other `Arc` (the table's are weak).
        if Arc::strong_count(&lock) == 1 {
            if delete && lock.in_place() {
                let _ = std::fs::remove_file(&lock.path);
            }
            table.remove(&lock.path);
        }
        drop(table);
        drop(lock);
    }

    /// What conductor `id`'s lock says of it.
    pub(crate) fn life(&self, id: ConductorId) -> Life {
        self.path(id).map_or(Life::Unknown, |p| probe(&p))
    }

    /// The conductors whose lock files exist and are free: every one of them is gone. Deletes
    /// temporary files left by processes that died while registering.
    pub(crate) fn dead(&self) -> Vec<ConductorId> {
        let Some(entries) = self.folder.as_ref().and_then(|f| std::fs::read_dir(f).ok()) else {
            return Vec::new();
        };
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if let Some(id) = name
                .strip_suffix(".lock")
                .and_then(|id| id.parse::<ConductorId>().ok())
            {
                if probe(&entry.path()) == Life::Dead {
                    dead.push(id);
                }
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMPORARY);
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        dead
    }

    /// Those of `ids` whose locks are still free.
    pub(crate) fn still_dead(&self, ids: Vec<ConductorId>) -> Vec<ConductorId> {
        ids.into_iter()
            .filter(|&id| self.life(id) == Life::Dead)
            .collect()
    }

    /// Deletes the lock files of `ids`, found dead and whose jobs were freed: each under an
    /// exclusive lock (a probe in progress keeps it for next time), if its name still leads to
    /// the file locked.
    pub(crate) fn forget(&self, ids: &[ConductorId]) {
        for &id in ids {
            let Some(path) = self.path(id) else {
                return;
            };
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                let lock = Held { path, file };
                if lock.in_place() {
                    let _ = std::fs::remove_file(&lock.path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locks() -> (tempfile::TempDir, Locks) {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::new(Some(&dir.path().join("baton.db")));
        (dir, locks)
    }

    #[test]
    fn a_held_lock_is_alive_to_another_board_of_the_process() {
        let (dir, mine) = locks();
        let other = Locks::new(Some(&dir.path().join("baton.db")));
        let id = ConductorId::new();
        assert_eq!(other.life(id), Life::Unknown, "no file: nothing is known");
        assert!(mine.keep(id).unwrap());
        assert_eq!(other.life(id), Life::Alive);
        assert!(other.dead().is_empty());
        // Kept again: still the same lock.
        assert!(mine.keep(id).unwrap());
        assert_eq!(other.life(id), Life::Alive);
        mine.release(id, false);
        assert_eq!(other.life(id), Life::Dead);
        assert_eq!(other.dead(), vec![id]);
        other.forget(&[id]);
        assert_eq!(other.life(id), Life::Unknown);
        assert!(other.dead().is_empty());
    }

    #[test]
    fn boards_of_one_process_share_a_conductors_lock() {
        let (dir, first) = locks();
        let second = Locks::new(Some(&dir.path().join("baton.db")));
        let id = ConductorId::new();
        assert!(first.keep(id).unwrap());
        assert!(
            second.keep(id).unwrap(),
            "a second board keeps the same lock"
        );
        first.release(id, true);
        assert_eq!(
            first.life(id),
            Life::Alive,
            "the second board still holds it"
        );
        second.release(id, true);
        assert_eq!(
            first.life(id),
            Life::Unknown,
            "deleted once nobody holds it"
        );
    }

    #[test]
    fn a_deleted_lock_file_is_made_again() {
        let (_dir, locks) = locks();
        let id = ConductorId::new();
        assert!(locks.keep(id).unwrap());
        std::fs::remove_file(locks.path(id).unwrap()).unwrap();
        assert_eq!(locks.life(id), Life::Unknown);
        assert!(locks.keep(id).unwrap());
        assert_eq!(locks.life(id), Life::Alive);
    }

    #[test]
    fn an_in_memory_database_has_no_locks() {
        let locks = Locks::new(None);
        let id = ConductorId::new();
        assert!(!locks.keep(id).unwrap());
        assert_eq!(locks.life(id), Life::Unknown);
        assert!(locks.dead().is_empty());
    }
}
