//! The alert store in the shared PostgreSQL state of a scaled deployment
//! (tables of the state's migration 3): the same records and the same
//! invariant as in `state.db` — one evaluation step is one transaction —
//! plus a fence: a step is recorded only while its evaluator still holds
//! the alert lease at the epoch it was given, checked in the step's own
//! transaction against the lease row (locked for share, so a takeover
//! waits for a step in progress and every later step sees it).

use std::sync::{Arc, Mutex};

use pantau_model::{SensorKind, Timestamp};
use pantau_state::postgres::{self, Client, GenericClient, Row, Transaction};
use pantau_state::StateDb;

use crate::evaluator::{Key, State};
use crate::store::{
    change_name, kinds_json, notification, passes, Alert, AlertEvent, AlertFilter, AlertState,
    ChangeRecord, Fence, Outgoing, Recorded, Result, Silence, StoreError, Webhook, WebhookHealth,
};

/// The columns [`alert_row`] reads, in its order.
const ALERT_COLUMNS: &str = "id, rule, rule_name, sensor, kind, district, public, state, level, \
     peak, level_label, since_ms, changed_ms, resolved_ms, resolved_by, ack_by, ack_ms, assignee, late";

/// The alert tables of the shared state.
#[derive(Debug)]
pub(crate) struct PgAlerts {
    state: Arc<StateDb>,
    fence: Mutex<Option<Fence>>,
}

/// What a transaction's body decided, inside the database's result.
type Decided<T> = std::result::Result<Result<T>, postgres::Error>;

fn corrupt(what: String, message: String) -> StoreError {
    StoreError::Corrupt {
        path: Default::default(),
        what,
        message,
    }
}

impl PgAlerts {
    pub(crate) fn new(state: Arc<StateDb>) -> Self {
        Self {
            state,
            fence: Mutex::new(None),
        }
    }

    pub(crate) fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn write<T>(&self, f: impl FnOnce(&mut Client) -> Decided<T>) -> Result<T> {
        self.state.pg_write(f).ok_or(StoreError::NotShared)??
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Decided<T>) -> Result<T> {
        self.state.pg_read(f).ok_or(StoreError::NotShared)??
    }

    pub(crate) fn cursor(&self) -> Result<i64> {
        Ok(0)
    }

    pub(crate) fn trackers(&self) -> Result<Vec<(Key, State)>> {
        self.read(|c| {
            let rows = c.query("SELECT rule, sensor, state FROM alert_trackers", &[])?;
            Ok(rows
                .iter()
                .map(|r| {
                    let (rule, sensor, state): (String, String, String) =
                        (r.get(0), r.get(1), r.get(2));
                    let state: State = serde_json::from_str(&state).map_err(|e| {
                        corrupt(format!("tracker ({rule}, {sensor})"), e.to_string())
                    })?;
                    Ok(((rule, sensor), state))
                })
                .collect())
        })
    }

    pub(crate) fn record(
        &self,
        changes: &[ChangeRecord],
        trackers: &[((&str, &str), Option<&State>)],
        _cursor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<Recorded>> {
        let fence = self.fence();
        let mut states = Vec::with_capacity(trackers.len());
        for (key, state) in trackers {
            let json = state
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| corrupt(format!("tracker ({}, {})", key.0, key.1), e.to_string()))?;
            states.push((key.0, key.1, json));
        }
        self.write(|c| {
            let mut tx = c.transaction()?;
            if let Some(f) = &fence {
                let epoch: Option<i64> = tx
                    .query_opt(
                        "SELECT epoch FROM leases WHERE name = $1 AND holder = $2 FOR SHARE",
                        &[&f.name, &f.holder],
                    )?
                    .map(|r| r.get(0));
                if epoch != Some(f.epoch) {
                    return Ok(Err(StoreError::Fenced {
                        name: f.name.clone(),
                        epoch: f.epoch,
                    }));
                }
            }
            let hooks = webhooks_in(&mut tx)?;
            let silences = silences_in(&mut tx, now)?;
            let mut out = Vec::with_capacity(changes.len());
            for ch in changes {
                let Some(mut rec) = apply_change(&mut tx, ch, now)? else {
                    continue;
                };
                let muted = silences
                    .iter()
                    .any(|s| s.mutes(&ch.key.0, &ch.key.1, ch.subject.kind, now));
                if !muted {
                    queue(&mut tx, &hooks, &rec, now)?;
                }
                rec.alert.muted = muted;
                out.push(rec);
            }
            for (rule, sensor, json) in &states {
                match json {
                    Some(j) => tx.execute(
                        "INSERT INTO alert_trackers (rule, sensor, state) VALUES ($1, $2, $3)
                         ON CONFLICT (rule, sensor) DO UPDATE SET state = excluded.state",
                        &[rule, sensor, j],
                    )?,
                    None => tx.execute(
                        "DELETE FROM alert_trackers WHERE rule = $1 AND sensor = $2",
                        &[rule, sensor],
                    )?,
                };
            }
            tx.commit()?;
            Ok(Ok(out))
        })
    }

    pub(crate) fn alert(&self, id: i64) -> Result<Alert> {
        self.read(|c| {
            Ok(alert_in(c, id)?
                .and_then(|a| a.ok_or_else(|| StoreError::NotFound(format!("alert {id}")))))
        })
    }

    pub(crate) fn timeline(&self, id: i64) -> Result<Vec<AlertEvent>> {
        self.read(|c| {
            let rows = c.query(
                "SELECT id, alert, change, level, from_level, at_ms, recorded_ms, late, actor, note
                 FROM alert_events WHERE alert = $1 ORDER BY id",
                &[&id],
            )?;
            Ok(Ok(rows.iter().map(event_row).collect()))
        })
    }

    pub(crate) fn events_since(&self, since: Timestamp) -> Result<Vec<AlertEvent>> {
        self.read(|c| {
            let rows = c.query(
                "SELECT id, alert, change, level, from_level, at_ms, recorded_ms, late, actor, note
                 FROM alert_events WHERE recorded_ms >= $1 ORDER BY id",
                &[&since.0],
            )?;
            Ok(Ok(rows.iter().map(event_row).collect()))
        })
    }

    pub(crate) fn alerts(&self, f: &AlertFilter) -> Result<Vec<Alert>> {
        let states: Vec<String> = f.states.iter().map(|s| s.as_str().to_owned()).collect();
        let kinds: Vec<String> = f.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        let min_level = f.min_level.map(i64::from);
        let (since, until) = (f.since.map(|t| t.0), f.until.map(|t| t.0));
        let limit = f.limit as i64;
        self.read(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts
                     WHERE (cardinality($1::text[]) = 0 OR state = ANY($1))
                       AND (cardinality($2::text[]) = 0 OR kind = ANY($2))
                       AND ($3::text IS NULL OR sensor = $3)
                       AND ($4::text IS NULL OR rule = $4)
                       AND ($5::text IS NULL OR district = $5)
                       AND ($6::bigint IS NULL OR peak >= $6)
                       AND (NOT $7 OR public)
                       AND ($8::bigint IS NULL OR changed_ms >= $8)
                       AND ($9::bigint IS NULL OR since_ms < $9)
                     ORDER BY changed_ms DESC, id DESC LIMIT $10"
                ),
                &[
                    &states,
                    &kinds,
                    &f.sensor,
                    &f.rule,
                    &f.district,
                    &min_level,
                    &f.public_only,
                    &since,
                    &until,
                    &limit,
                ],
            )?;
            Ok(rows.iter().map(alert_row).collect())
        })
    }

    pub(crate) fn acknowledge(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, alert, now| {
            if alert.state == AlertState::Resolved {
                return Ok(Err(StoreError::Exists(format!(
                    "alert {id} is resolved; nothing"
                ))));
            }
            tx.execute(
                "UPDATE alerts SET state = 'acknowledged', ack_by = $2, ack_ms = $3 WHERE id = $1",
                &[&id, &by, &now.0],
            )?;
            Ok(Ok(("acknowledged", note.map(str::to_owned))))
        })
    }

    pub(crate) fn assign(&self, id: i64, by: &str, assignee: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, _, _| {
            tx.execute(
                "UPDATE alerts SET assignee = $2 WHERE id = $1",
                &[&id, &assignee],
            )?;
            Ok(Ok(("assigned", assignee.map(str::to_owned))))
        })
    }

    pub(crate) fn note(&self, id: i64, by: &str, note: &str) -> Result<Recorded> {
        self.act(id, by, |_, _, _| Ok(Ok(("note", Some(note.to_owned())))))
    }

    pub(crate) fn resolve(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, alert, now| {
            if alert.state == AlertState::Resolved {
                return Ok(Err(StoreError::Exists(format!(
                    "alert {id} is resolved; nothing"
                ))));
            }
            tx.execute(
                "UPDATE alerts SET state = 'resolved', level = 0, resolved_ms = $2,
                        resolved_by = $3, changed_ms = $2 WHERE id = $1",
                &[&id, &now.0, &by],
            )?;
            tx.execute("DELETE FROM alert_current WHERE alert = $1", &[&id])?;
            Ok(Ok(("resolved", note.map(str::to_owned))))
        })
    }

    /// A person's action on an alert, in one transaction with its timeline
    /// event (and its notifications, for an acknowledgement or a
    /// resolution). The alert row is locked first: two people acting at
    /// once on two replicas are recorded one after the other.
    fn act(
        &self,
        id: i64,
        by: &str,
        f: impl FnOnce(
            &mut Transaction<'_>,
            &Alert,
            Timestamp,
        ) -> Decided<(&'static str, Option<String>)>,
    ) -> Result<Recorded> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            let before = match tx
                .query_opt(
                    &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )?
                .map(|r| alert_row(&r))
            {
                Some(Ok(a)) => a,
                Some(Err(e)) => return Ok(Err(e)),
                None => return Ok(Err(StoreError::NotFound(format!("alert {id}")))),
            };
            let now = Timestamp::now();
            let (change, note) = match f(&mut tx, &before, now)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let level = if change == "resolved" { 0 } else { before.level };
            let event_id: i64 = tx
                .query_one(
                    "INSERT INTO alert_events (alert, change, level, from_level, at_ms, recorded_ms, late, actor, note)
                     VALUES ($1, $2, $3, $4, $5, $5, false, $6, $7) RETURNING id",
                    &[&id, &change, &i64::from(level), &i64::from(before.level), &now.0, &by, &note],
                )?
                .get(0);
            let alert = match alert_in(&mut tx, id)? {
                Ok(Some(a)) => a,
                Err(e) => return Ok(Err(e)),
                Ok(None) => return Ok(Err(StoreError::NotFound(format!("alert {id}")))),
            };
            let event = AlertEvent {
                id: event_id,
                alert: id,
                change: change.into(),
                level,
                from: before.level,
                at: now,
                recorded: now,
                late: false,
                by: Some(by.to_owned()),
                note,
            };
            let rec = Recorded { alert, event };
            if matches!(change, "resolved" | "acknowledged") {
                let hooks = webhooks_in(&mut tx)?;
                queue(&mut tx, &hooks, &rec, now)?;
            }
            tx.commit()?;
            Ok(Ok(rec))
        })
    }

    pub(crate) fn rules(&self) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let rows = c.query("SELECT id, spec FROM alert_rules ORDER BY id", &[])?;
            Ok(Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
        })
    }

    pub(crate) fn put_rule(&self, id: &str, spec: &str, by: &str) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO alert_rules (id, spec, updated_ms, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec,
                     updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
                &[&id, &spec, &Timestamp::now().0, &by],
            )?;
            Ok(Ok(()))
        })
    }

    pub(crate) fn delete_rule(&self, id: &str) -> Result<()> {
        self.write(|c| {
            let n = c.execute("DELETE FROM alert_rules WHERE id = $1", &[&id])?;
            Ok(if n == 0 {
                Err(StoreError::NotFound(format!("alert rule {id:?}")))
            } else {
                Ok(())
            })
        })
    }

    pub(crate) fn add_webhook(&self, w: &Webhook) -> Result<()> {
        let districts = serde_json::to_string(&w.districts).unwrap_or_else(|_| "[]".into());
        self.write(|c| {
            let n = c.execute(
                "INSERT INTO alert_webhooks (id, url, secret, kinds, districts, min_level, created_by, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                &[
                    &w.id,
                    &w.url,
                    &w.secret,
                    &kinds_json(&w.kinds),
                    &districts,
                    &i64::from(w.min_level),
                    &w.created_by,
                    &w.created.0,
                ],
            )?;
            Ok(if n == 0 {
                Err(StoreError::Exists(format!("webhook {:?}", w.id)))
            } else {
                Ok(())
            })
        })
    }

    pub(crate) fn delete_webhook(&self, id: &str) -> Result<()> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("DELETE FROM alert_webhooks WHERE id = $1", &[&id])?;
            if n == 0 {
                return Ok(Err(StoreError::NotFound(format!("webhook {id:?}"))));
            }
            tx.execute("DELETE FROM alert_outbox WHERE webhook = $1", &[&id])?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    pub(crate) fn webhooks(&self) -> Result<Vec<Webhook>> {
        self.read(|c| Ok(Ok(webhooks_in(c)?)))
    }

    pub(crate) fn outgoing(&self, webhook: &str, limit: usize) -> Result<Vec<Outgoing>> {
        self.read(|c| {
            let rows = c.query(
                "SELECT id, msg_id, body, queued_ms FROM alert_outbox WHERE webhook = $1 ORDER BY id LIMIT $2",
                &[&webhook, &(limit as i64)],
            )?;
            Ok(Ok(rows
                .iter()
                .map(|r| Outgoing {
                    row: r.get(0),
                    msg_id: r.get(1),
                    body: r.get(2),
                    queued: Timestamp(r.get(3)),
                })
                .collect()))
        })
    }

    pub(crate) fn delivered(&self, webhook: &str, row: i64, now: Timestamp) -> Result<()> {
        self.write(|c| {
            let mut tx = c.transaction()?;
            tx.execute("DELETE FROM alert_outbox WHERE id = $1", &[&row])?;
            tx.execute(
                "UPDATE alert_webhooks SET last_success_ms = $2, consecutive_errors = 0,
                     delivered = delivered + 1 WHERE id = $1",
                &[&webhook, &now.0],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    pub(crate) fn failed(&self, webhook: &str, error: &str, now: Timestamp) -> Result<u32> {
        self.write(|c| {
            let n: Option<i64> = c
                .query_opt(
                    "UPDATE alert_webhooks SET last_failure_ms = $2, last_error = $3,
                         consecutive_errors = consecutive_errors + 1 WHERE id = $1
                     RETURNING consecutive_errors",
                    &[&webhook, &now.0, &error],
                )?
                .map(|r| r.get(0));
            Ok(Ok(n.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32))
        })
    }

    pub(crate) fn outbox_depth(&self) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM alert_outbox", &[])?
                .get(0);
            Ok(Ok(n as u64))
        })
    }

    pub(crate) fn add_silence(&self, s: &Silence) -> Result<i64> {
        let spec =
            serde_json::to_string(s).map_err(|e| corrupt("silence".into(), e.to_string()))?;
        self.write(|c| {
            let id: i64 = c
                .query_one(
                    "INSERT INTO alert_silences (spec, ends_ms) VALUES ($1, $2) RETURNING id",
                    &[&spec, &s.ends.0],
                )?
                .get(0);
            Ok(Ok(id))
        })
    }

    pub(crate) fn cancel_silence(&self, id: i64, by: &str) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE alert_silences SET cancelled_by = $2, cancelled_ms = $3
                 WHERE id = $1 AND cancelled_ms IS NULL",
                &[&id, &by, &Timestamp::now().0],
            )?;
            Ok(if n == 0 {
                Err(StoreError::NotFound(format!("active silence {id}")))
            } else {
                Ok(())
            })
        })
    }

    pub(crate) fn silences(&self, now: Timestamp) -> Result<Vec<Silence>> {
        self.read(|c| Ok(Ok(silences_in(c, now)?)))
    }
}

fn level(r: &Row, i: usize) -> u8 {
    r.get::<_, i64>(i).clamp(0, i64::from(u8::MAX)) as u8
}

fn alert_row(r: &Row) -> Result<Alert> {
    let kind: String = r.get(4);
    let state: String = r.get(7);
    let id: i64 = r.get(0);
    Ok(Alert {
        id,
        rule: r.get(1),
        rule_name: r.get(2),
        sensor: r.get(3),
        kind: SensorKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("alert {id}"), format!("unknown kind {kind:?}")))?,
        district: r.get(5),
        public: r.get(6),
        state: AlertState::parse(&state)
            .ok_or_else(|| corrupt(format!("alert {id}"), format!("unknown state {state:?}")))?,
        level: level(r, 8),
        peak: level(r, 9),
        level_label: r.get(10),
        since: Timestamp(r.get(11)),
        changed: Timestamp(r.get(12)),
        resolved_at: r.get::<_, Option<i64>>(13).map(Timestamp),
        resolved_by: r.get(14),
        ack_by: r.get(15),
        ack_at: r.get::<_, Option<i64>>(16).map(Timestamp),
        assignee: r.get(17),
        late: r.get(18),
        muted: false,
    })
}

fn event_row(r: &Row) -> AlertEvent {
    AlertEvent {
        id: r.get(0),
        alert: r.get(1),
        change: r.get(2),
        level: level(r, 3),
        from: level(r, 4),
        at: Timestamp(r.get(5)),
        recorded: Timestamp(r.get(6)),
        late: r.get(7),
        by: r.get(8),
        note: r.get(9),
    }
}

fn alert_in(c: &mut impl GenericClient, id: i64) -> Decided<Option<Alert>> {
    Ok(c.query_opt(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"),
        &[&id],
    )?
    .map(|r| alert_row(&r))
    .transpose())
}

/// Applies one change of the condition to its alert, as in `state.db`: a
/// new alert for a raise (or any change with no current alert), the same
/// alert otherwise; `None` for a clear with nothing open.
fn apply_change(
    tx: &mut Transaction<'_>,
    c: &ChangeRecord,
    now: Timestamp,
) -> std::result::Result<Option<Recorded>, postgres::Error> {
    use crate::Change;
    let (rule, sensor) = (&c.key.0, &c.key.1);
    let current: Option<i64> = tx
        .query_opt(
            "SELECT alert FROM alert_current WHERE rule = $1 AND sensor = $2 FOR UPDATE",
            &[rule, sensor],
        )?
        .map(|r| r.get(0));
    let at = c.change.at().0;
    let level = i64::from(c.change.level());
    let current = match (current, c.change) {
        (None, Change::Resolved { .. }) => return Ok(None),
        // A raise after the cool-down: the old alert stays resolved.
        (Some(_), Change::Raised { .. }) => None,
        (cur, _) => cur,
    };
    let from = match c.change {
        Change::Escalated { from, .. }
        | Change::DeEscalated { from, .. }
        | Change::Resolved { from, .. } => from,
        Change::Raised { .. } | Change::Reopened { .. } => 0,
    };
    let row = match current {
        None => {
            let row = tx.query_one(
                &format!(
                    "INSERT INTO alerts (rule, rule_name, sensor, kind, district, public, state,
                         level, peak, level_label, since_ms, changed_ms, late)
                     VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7, $8, $9, $9, $10)
                     RETURNING {ALERT_COLUMNS}"
                ),
                &[
                    rule,
                    &c.subject.rule_name,
                    sensor,
                    &c.subject.kind.as_str(),
                    &c.subject.district,
                    &c.subject.public,
                    &level,
                    &c.level_label,
                    &at,
                    &c.late,
                ],
            )?;
            let id: i64 = row.get(0);
            tx.execute(
                "INSERT INTO alert_current (rule, sensor, alert) VALUES ($1, $2, $3)
                 ON CONFLICT (rule, sensor) DO UPDATE SET alert = excluded.alert",
                &[rule, sensor, &id],
            )?;
            row
        }
        Some(id) => {
            let set = match c.change {
                Change::Resolved { .. } => {
                    "state = 'resolved', level = $2, resolved_ms = $4, resolved_by = NULL,
                     changed_ms = $4, late = $5"
                }
                Change::Reopened { .. } => {
                    "state = 'open', level = $2, peak = GREATEST(peak, $2), level_label = $3,
                     since_ms = $4, changed_ms = $4, resolved_ms = NULL, resolved_by = NULL,
                     ack_by = NULL, ack_ms = NULL, late = $5"
                }
                // Worse than what was acknowledged: it needs attention again.
                Change::Escalated { .. } | Change::Raised { .. } => {
                    "state = 'open', level = $2, peak = GREATEST(peak, $2), level_label = $3,
                     changed_ms = $4, late = $5"
                }
                Change::DeEscalated { .. } => {
                    "level = $2, level_label = $3, changed_ms = $4, late = $5"
                }
            };
            // Every statement names $1..$5, so the types are known.
            tx.query_one(
                &format!(
                    "UPDATE alerts SET {set} WHERE id = $1 AND $3::text IS NOT NULL
                     RETURNING {ALERT_COLUMNS}"
                ),
                &[&id, &level, &c.level_label, &at, &c.late],
            )?
        }
    };
    let alert = match alert_row(&row) {
        Ok(a) => a,
        // Columns this process wrote a moment ago: unreadable only if the
        // schema is not the one migration 3 made.
        Err(e) => panic!("an alert row written by this transaction: {e}"),
    };
    let id = alert.id;
    let note = c.value.map(|v| format!("value {v}"));
    let event_id: i64 = tx
        .query_one(
            "INSERT INTO alert_events (alert, change, level, from_level, at_ms, recorded_ms, late, actor, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8) RETURNING id",
            &[
                &id,
                &change_name(&c.change),
                &level,
                &i64::from(from),
                &at,
                &now.0,
                &c.late,
                &note,
            ],
        )?
        .get(0);
    Ok(Some(Recorded {
        alert,
        event: AlertEvent {
            id: event_id,
            alert: id,
            change: change_name(&c.change).into(),
            level: c.change.level(),
            from,
            at: Timestamp(at),
            recorded: now,
            late: c.late,
            by: None,
            note,
        },
    }))
}

fn webhooks_in(c: &mut impl GenericClient) -> std::result::Result<Vec<Webhook>, postgres::Error> {
    let rows = c.query(
        "SELECT w.id, url, secret, kinds, districts, min_level, created_by, created_ms,
                last_success_ms, last_failure_ms, last_error, consecutive_errors, delivered,
                (SELECT count(*) FROM alert_outbox o WHERE o.webhook = w.id)
         FROM alert_webhooks w ORDER BY w.id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let kinds: Vec<String> = serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default();
            Webhook {
                id: r.get(0),
                url: r.get(1),
                secret: r.get(2),
                kinds: kinds.iter().filter_map(|k| SensorKind::parse(k)).collect(),
                districts: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default(),
                min_level: level(r, 5),
                created_by: r.get(6),
                created: Timestamp(r.get(7)),
                health: WebhookHealth {
                    last_success: r.get::<_, Option<i64>>(8).map(Timestamp),
                    last_failure: r.get::<_, Option<i64>>(9).map(Timestamp),
                    last_error: r.get(10),
                    consecutive_errors: r.get::<_, i64>(11).clamp(0, i64::from(u32::MAX)) as u32,
                    delivered: r.get::<_, i64>(12) as u64,
                    pending: r.get::<_, i64>(13) as u64,
                },
            }
        })
        .collect())
}

fn silences_in(
    c: &mut impl GenericClient,
    now: Timestamp,
) -> std::result::Result<Vec<Silence>, postgres::Error> {
    let rows = c.query(
        "SELECT id, spec FROM alert_silences WHERE ends_ms > $1 AND cancelled_ms IS NULL ORDER BY id",
        &[&now.0],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let mut s: Silence = serde_json::from_str(r.get::<_, &str>(1)).ok()?;
            s.id = r.get(0);
            Some(s)
        })
        .collect())
}

fn queue(
    tx: &mut Transaction<'_>,
    hooks: &[Webhook],
    rec: &Recorded,
    now: Timestamp,
) -> std::result::Result<(), postgres::Error> {
    let mut body = None;
    let msg_id = format!("msg_{}", rec.event.id);
    for h in hooks.iter().filter(|h| passes(h, &rec.alert)) {
        let body: &String = body.get_or_insert_with(|| notification(rec).to_string());
        tx.execute(
            "INSERT INTO alert_outbox (webhook, msg_id, body, queued_ms) VALUES ($1, $2, $3, $4)",
            &[&h.id, &msg_id, body, &now.0],
        )?;
    }
    Ok(())
}
