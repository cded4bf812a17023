//! Exports: every table the console shows, as typed rows rendered to CSV
//! (RFC 4180) or Excel (`.xlsx`: real numbers and dates, a bold header row,
//! an autofilter). The rows come from `ops`, so a VM the caller may not see
//! is in no export.

mod tables;

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};

pub use tables::{audit_table, build, ExportQuery, TABLES};

/// One cell, typed so a spreadsheet can sort and sum it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    /// UNIX seconds, shown as a UTC date and time.
    Time(u64),
    Empty,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Number(n as f64)
    }
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Cell {
        v.map_or(Cell::Empty, Cell::Number)
    }
}

/// A table with a name (the sheet and file name) and a header row.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// The formats an export comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Xlsx,
    /// One HTML table, for Excel web queries.
    Html,
    /// An array of objects keyed by column, for Power Query and scripts.
    Json,
    /// An Excel web query file that fetches the HTML table.
    Iqy,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 5] = [
        ExportFormat::Csv,
        ExportFormat::Xlsx,
        ExportFormat::Html,
        ExportFormat::Json,
        ExportFormat::Iqy,
    ];

    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "csv" => Some(ExportFormat::Csv),
            "xlsx" => Some(ExportFormat::Xlsx),
            "html" => Some(ExportFormat::Html),
            "json" => Some(ExportFormat::Json),
            "iqy" => Some(ExportFormat::Iqy),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
            ExportFormat::Html => "text/html; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::Iqy => "text/x-ms-iqy; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
            ExportFormat::Html => "html",
            ExportFormat::Json => "json",
            ExportFormat::Iqy => "iqy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the spreadsheet: {0}")]
pub struct ExportError(#[from] rust_xlsxwriter::XlsxError);

/// A text cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`,
/// and tab or CR, which some strip first) gets a leading quote.
fn defused(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

impl Report {
    /// The table in `format` (not [`ExportFormat::Iqy`], which is a
    /// pointer to the HTML form: see [`iqy`]).
    pub fn render(&self, format: ExportFormat) -> Result<Vec<u8>, ExportError> {
        match format {
            ExportFormat::Csv => Ok(self.csv().into_bytes()),
            ExportFormat::Xlsx => self.xlsx(),
            ExportFormat::Html => Ok(self.html().into_bytes()),
            ExportFormat::Json | ExportFormat::Iqy => Ok(self.json().to_string().into_bytes()),
        }
    }

    fn html(&self) -> String {
        let cell = |c: &Cell| match c {
            Cell::Text(s) => s.clone(),
            Cell::Number(n) => n.to_string(),
            Cell::Time(t) => lifeboat_core::model::rfc3339(*t),
            Cell::Empty => String::new(),
        };
        maud::html! {
            (maud::DOCTYPE)
            html { head { meta charset="utf-8"; title { (self.name) } } body {
                table {
                    thead { tr { @for c in &self.columns { th { (c) } } } }
                    tbody { @for row in &self.rows { tr { @for c in row { td { (cell(c)) } } } } }
                }
            } }
        }
        .into_string()
    }

    fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                let object: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(k, c)| {
                        let v = match c {
                            Cell::Text(s) => serde_json::json!(s),
                            Cell::Number(n) => serde_json::json!(n),
                            Cell::Time(t) => serde_json::json!(lifeboat_core::model::rfc3339(*t)),
                            Cell::Empty => serde_json::Value::Null,
                        };
                        (k.clone(), v)
                    })
                    .collect();
                serde_json::Value::Object(object)
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    pub fn csv(&self) -> String {
        let field = |s: &str| {
            let s = defused(s);
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.into_owned()
            }
        };
        let mut out = self
            .columns
            .iter()
            .map(|c| field(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push_str("\r\n");
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| match c {
                    Cell::Text(s) => field(s),
                    Cell::Number(n) => n.to_string(),
                    Cell::Time(t) => lifeboat_core::model::rfc3339(*t),
                    Cell::Empty => String::new(),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }

    fn xlsx(&self) -> Result<Vec<u8>, ExportError> {
        let mut book = Workbook::new();
        let sheet = book.add_worksheet();
        // Excel's limit for a sheet name.
        let name: String = self.name.chars().take(31).collect();
        sheet.set_name(&name)?;
        let bold = Format::new().set_bold();
        let date = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
        for (c, title) in self.columns.iter().enumerate() {
            sheet.write_string_with_format(0, c as u16, title.as_str(), &bold)?;
            sheet.set_column_width(c as u16, (title.len() as f64 + 4.0).max(12.0))?;
        }
        for (r, row) in self.rows.iter().enumerate() {
            let r = r as u32 + 1;
            for (c, cell) in row.iter().enumerate() {
                let c = c as u16;
                match cell {
                    Cell::Text(s) => {
                        sheet.write_string(r, c, defused(s).as_ref())?;
                    }
                    Cell::Number(n) => {
                        sheet.write_number(r, c, *n)?;
                    }
                    Cell::Time(t) => {
                        let when = ExcelDateTime::from_timestamp(*t as i64)?;
                        sheet.write_datetime_with_format(r, c, &when, &date)?;
                        sheet.set_column_width(c, 20)?;
                    }
                    Cell::Empty => {}
                }
            }
        }
        let last_col = self.columns.len().saturating_sub(1) as u16;
        sheet.autofilter(0, 0, self.rows.len() as u32, last_col)?;
        sheet.set_freeze_panes(1, 0)?;
        Ok(book.save_to_buffer()?)
    }
}

/// `GET …/exports/TABLE?format=csv|xlsx&…` for the console and the API
/// alike: the table as a download. Needs `view-reports`.
pub async fn export(
    ops: &lifeboat_core::ops::Ops,
    who: &lifeboat_core::model::Principal,
    req: &crate::http::Req,
    table: &str,
    format: ExportFormat,
) -> Result<hyper::Response<crate::http::Body>, lifeboat_core::ops::OpsError> {
    use lifeboat_core::ops::OpsError;
    ops.require_for(
        who,
        lifeboat_core::model::Privilege::ViewReports,
        "export",
        table,
    )
    .await?;
    let timeframe = match req.query_param("timeframe") {
        None => None,
        Some(t) => Some(
            lifeboat_core::model::Timeframe::parse(&t)
                .ok_or_else(|| OpsError::BadRequest(format!("unknown timeframe {t:?}")))?,
        ),
    };
    let chargeback = (table == "chargeback")
        .then(|| chargeback_query(req))
        .transpose()?;
    let query = ExportQuery {
        id: req.query_param("id"),
        host: req.query_param("host"),
        timeframe,
        chargeback,
        focus: req
            .query_param("focus")
            .is_some_and(|v| v == "1" || v == "true"),
        audit: audit_filter(req, 100_000)?,
    };
    let report = build(ops, who, table, &query).await?;
    let body = match format {
        ExportFormat::Iqy => iqy(req).into_bytes(),
        _ => report
            .render(format)
            .map_err(|e| OpsError::Internal(e.to_string()))?,
    };
    let mut r = crate::http::response(hyper::StatusCode::OK, format.content_type(), body);
    let file = format!(
        "attachment; filename=\"lifeboat-{}.{}\"",
        report
            .name
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
        format.extension()
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&file) {
        r.headers_mut()
            .insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// An Excel web query (`.iqy`) for the request's own export as an HTML
/// table: the same path and filters, `format=html`, and the API token the
/// request carried in `access_token` (or a placeholder to replace: a web
/// query sends no headers, so the token must be in the URL).
fn iqy(req: &crate::http::Req) -> String {
    let host = req
        .header("host")
        .filter(|h| crate::web::downloads::plain_host(h))
        .unwrap_or("CONTROLLER");
    let mut pairs: Vec<(String, String)> = req
        .query_pairs()
        .into_iter()
        .filter(|(k, _)| k != "format" && k != "access_token")
        .collect();
    pairs.push(("format".into(), "html".into()));
    let token = req
        .query_param("access_token")
        .unwrap_or_else(|| "PASTE-AN-API-TOKEN-HERE".into());
    pairs.push(("access_token".into(), token));
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!(
        "WEB\r\n1\r\nhttps://{host}{}?{query}\r\n\r\nSelection=AllTables\r\nFormatting=None\r\n",
        req.path
    )
}

/// `from`, `to` (YYYY-MM-DD, UTC; default this month so far), `period`
/// (`day` or `month`, default month), `group` (a category key) and the
/// rates `rate_vcpu_hour`, `rate_memory_gib_hour`, `rate_cpu_core_hour`,
/// `rate_disk_gb_month`, `rate_backup_gb_month` (default 0).
fn chargeback_query(
    req: &crate::http::Req,
) -> Result<lifeboat_core::ops::ChargebackQuery, lifeboat_core::ops::OpsError> {
    use lifeboat_core::ops::{ChargebackPeriod, OpsError};
    let date = |name: &str| -> Result<Option<u64>, OpsError> {
        let Some(v) = req.query_param(name) else {
            return Ok(None);
        };
        let parts: Vec<&str> = v.split('-').collect();
        let parsed = match parts.as_slice() {
            [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => (|| {
                let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
                time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
            })(),
            _ => None,
        };
        parsed
            .map(|d| Some(d.midnight().assume_utc().unix_timestamp().max(0) as u64))
            .ok_or_else(|| OpsError::BadRequest(format!("{name}: a date as YYYY-MM-DD, not {v:?}")))
    };
    let now = time::OffsetDateTime::now_utc();
    let month_start = now
        .date()
        .replace_day(1)
        .map(|d| d.midnight().assume_utc().unix_timestamp() as u64)
        .unwrap_or(0);
    let rate = |name: &str| -> Result<f64, OpsError> {
        match req.query_param(name) {
            None => Ok(0.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or_else(|| {
                    OpsError::BadRequest(format!("{name}: a price of 0 or more, not {v:?}"))
                }),
        }
    };
    Ok(lifeboat_core::ops::ChargebackQuery {
        from: date("from")?.unwrap_or(month_start),
        to: date("to")?.unwrap_or(now.unix_timestamp() as u64),
        period: match req.query_param("period").as_deref() {
            None | Some("month") => ChargebackPeriod::Month,
            Some("day") => ChargebackPeriod::Day,
            Some(p) => {
                return Err(OpsError::BadRequest(format!(
                    "period: day or month, not {p:?}"
                )))
            }
        },
        group_by: req.query_param("group"),
        rates: lifeboat_core::model::Rates {
            vcpu_hour: rate("rate_vcpu_hour")?,
            memory_gib_hour: rate("rate_memory_gib_hour")?,
            cpu_core_hour: rate("rate_cpu_core_hour")?,
            disk_gb_month: rate("rate_disk_gb_month")?,
            backup_gb_month: rate("rate_backup_gb_month")?,
        },
    })
}

/// The audit trail's filters from a query string: `user`, `action`,
/// `object`, `since`, `until` (UNIX seconds) and `limit`.
pub fn audit_filter(
    req: &crate::http::Req,
    default_limit: usize,
) -> Result<lifeboat_core::ops::AuditFilter, lifeboat_core::ops::OpsError> {
    let number = |name: &str| -> Result<Option<u64>, lifeboat_core::ops::OpsError> {
        req.query_param(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    lifeboat_core::ops::OpsError::BadRequest(format!("{name} must be a number"))
                })
            })
            .transpose()
    };
    Ok(lifeboat_core::ops::AuditFilter {
        user: req.query_param("user"),
        action: req.query_param("action"),
        object: req.query_param("object"),
        since: number("since")?,
        until: number("until")?,
        limit: number("limit")?.map_or(default_limit, |l| l as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            name: "vms".into(),
            columns: vec!["name".into(), "memory".into(), "since".into()],
            rows: vec![
                vec![
                    "=cmd|' /C calc'!A0".into(),
                    Cell::Number(512.0),
                    Cell::Time(0),
                ],
                vec!["a, \"b\"".into(), Cell::Empty, Cell::Time(1_700_000_000)],
            ],
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        let csv = report().csv();
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], "name,memory,since");
        assert_eq!(lines[1], "'=cmd|' /C calc'!A0,512,1970-01-01T00:00:00Z");
        assert_eq!(lines[2], "\"a, \"\"b\"\"\",,2023-11-14T22:13:20Z");
    }

    #[test]
    fn xlsx_is_a_zip_workbook() {
        let bytes = report().render(ExportFormat::Xlsx).unwrap();
        assert_eq!(&bytes[..2], b"PK");
        assert!(bytes.len() > 1000);
    }
}
