//! Re-encryption of every stored secret under the key ring's primary key.

use keyhaven_core::StoreError;
use rusqlite::params;

use super::{SqliteStore, map_err};
use crate::rotate::{RotationReport, Table};

impl SqliteStore {
    /// Re-encrypts every secret under the primary key, in batches, while other
    /// reads and writes go on. Rows already under the primary are skipped, so an
    /// interrupted rotation resumes where it stopped when run again.
    pub async fn rotate(&self, batch: usize) -> Result<RotationReport, StoreError> {
        let mut report = RotationReport::default();
        for table in Table::ALL {
            let mut cursor = String::new();
            loop {
                let sql = format!(
                    "SELECT {key}, {col} FROM {t} WHERE {key} > ?1 AND {col} IS NOT NULL ORDER BY {key} LIMIT ?2",
                    key = table.key,
                    col = table.column,
                    t = table.table
                );
                let rows: Vec<(String, Vec<u8>)> = self.read(|c| {
                    let mut st = c.prepare_cached(&sql).map_err(map_err)?;
                    let rows = st
                        .query_map(params![cursor, batch as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .map_err(map_err)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(map_err)?;
                    Ok(rows)
                })?;
                let Some(last) = rows.last().map(|r| r.0.clone()) else {
                    break;
                };
                let keys = self.key_ring();
                let changes = crate::rotate::reencrypt(&keys, table, rows, &mut report)?;
                let update = format!(
                    "UPDATE {t} SET {col} = ?1 WHERE {key} = ?2 AND {col} = ?3",
                    key = table.key,
                    col = table.column,
                    t = table.table
                );
                let (done, raced) = self
                    .write(move |conn, _| {
                        let (mut done, mut raced) = (0, 0);
                        for (key, old, new) in &changes {
                            match conn
                                .execute(&update, params![new, key, old])
                                .map_err(map_err)?
                            {
                                0 => raced += 1,
                                _ => done += 1,
                            }
                        }
                        Ok((done, raced))
                    })
                    .await?;
                report.reencrypted += done;
                report.changed_meanwhile += raced;
                cursor = last;
            }
        }
        Ok(report)
    }
}
