//! Daily and monthly usage kept across restarts in a small embedded database (redb). The file is
//! opened only for a load or a flush, so a second process taking over the ports can use
//! it too; each flush adds this process's new bytes to what is stored (never overwrites),
//! so two writers during a takeover both count.

use super::quota::Periods;
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// key: "jid:<bare jid>", "domain:<domain>" (per UTC day) or the same with "month-" in
/// front (per UTC month); value: (day or month number, bytes in it).
const USAGE: TableDefinition<&str, (u32, u64)> = TableDefinition::new("usage");

/// How long to wait for another process that holds the file for its own flush.
const LOCK_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct QuotaStore {
    path: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("quota store {}: {e}", path.display()))
}

impl QuotaStore {
    /// Opens (creating it if needed) and returns what was counted in the current periods.
    pub fn open(path: &Path, now: Periods) -> io::Result<(QuotaStore, Vec<(String, u64)>)> {
        let store = QuotaStore {
            path: path.to_path_buf(),
        };
        let db = store.db()?;
        let mut today_rows = Vec::new();
        let txn = db.begin_write().map_err(|e| err(path, e))?;
        {
            let mut t = txn.open_table(USAGE).map_err(|e| err(path, e))?;
            for row in t.iter().map_err(|e| err(path, e))? {
                let (k, v) = row.map_err(|e| err(path, e))?;
                let (period, n) = v.value();
                if period == now.of(k.value()) {
                    today_rows.push((k.value().to_string(), n));
                }
            }
            // Older days and months are never read again.
            t.retain(|k, (period, _)| period == now.of(k))
                .map_err(|e| err(path, e))?;
        }
        txn.commit().map_err(|e| err(path, e))?;
        Ok((store, today_rows))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> io::Result<Database> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Database::create(&self.path) {
                Ok(db) => return Ok(db),
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(&self.path, e)),
            }
        }
    }

    /// Adds each (key, period, bytes) to the stored count of that period and returns the
    /// new totals in the same order. Rows of a period that is over are dropped.
    pub fn add(&self, rows: &[(String, u32, u64)], now: Periods) -> io::Result<Vec<u64>> {
        let db = self.db()?;
        let p = &self.path;
        let txn = db.begin_write().map_err(|e| err(p, e))?;
        let mut totals = Vec::with_capacity(rows.len());
        {
            let mut t = txn.open_table(USAGE).map_err(|e| err(p, e))?;
            for (key, day, n) in rows {
                let stored = match t.get(key.as_str()).map_err(|e| err(p, e))? {
                    Some(v) if v.value().0 == *day => v.value().1,
                    _ => 0,
                };
                let total = stored + n;
                if *day == now.of(key) {
                    t.insert(key.as_str(), (*day, total))
                        .map_err(|e| err(p, e))?;
                }
                totals.push(total);
            }
            t.retain(|k, (period, _)| period == now.of(k))
                .map_err(|e| err(p, e))?;
        }
        txn.commit().map_err(|e| err(p, e))?;
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Day `d` of month 7.
    fn on(d: u32) -> Periods {
        Periods { day: d, month: 7 }
    }

    #[test]
    fn counts_survive_a_reopen_and_add_up_across_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let (a, rows) = QuotaStore::open(&path, on(100)).unwrap();
        assert!(rows.is_empty());
        let t = a
            .add(&[("jid:romeo@example.org".into(), 100, 700)], on(100))
            .unwrap();
        assert_eq!(t, vec![700]);
        // A second process (takeover) opens the same file and adds its own bytes.
        let (b, rows) = QuotaStore::open(&path, on(100)).unwrap();
        assert_eq!(rows, vec![("jid:romeo@example.org".to_string(), 700)]);
        let t = b
            .add(&[("jid:romeo@example.org".into(), 100, 50)], on(100))
            .unwrap();
        assert_eq!(t, vec![750]);
        let t = a
            .add(&[("jid:romeo@example.org".into(), 100, 1)], on(100))
            .unwrap();
        assert_eq!(t, vec![751]);
    }

    #[test]
    fn a_new_day_starts_from_zero_and_old_days_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let (a, _) = QuotaStore::open(&path, on(100)).unwrap();
        a.add(&[("domain:example.org".into(), 100, 9)], on(100))
            .unwrap();
        let (_, rows) = QuotaStore::open(&path, on(101)).unwrap();
        assert!(rows.is_empty());
        let (_, rows) = QuotaStore::open(&path, on(100)).unwrap();
        assert!(rows.is_empty(), "day 100 was purged when day 101 opened");
    }

    #[test]
    fn a_month_row_lives_through_the_days_of_its_month() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let (a, _) = QuotaStore::open(&path, on(100)).unwrap();
        let rows = [
            ("month-jid:romeo@example.org".to_string(), 7, 40),
            ("jid:romeo@example.org".to_string(), 100, 40),
        ];
        a.add(&rows, on(100)).unwrap();
        // The next day: the daily row is gone, the monthly one stays.
        let (_, rows) = QuotaStore::open(&path, on(101)).unwrap();
        assert_eq!(rows, vec![("month-jid:romeo@example.org".to_string(), 40)]);
        // The next month: both are gone.
        let next = Periods { day: 131, month: 8 };
        let (_, rows) = QuotaStore::open(&path, next).unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let e = QuotaStore::open(Path::new("/proc/no/such/dir/q.redb"), on(1)).unwrap_err();
        assert!(e
            .to_string()
            .contains("quota store /proc/no/such/dir/q.redb"));
    }
}
