//! What the REST route table and the console's form table share: who may
//! call an entry, and finding an entry by method and path pattern (`{…}`
//! stands for one segment).

use lifeboat_core::model::Privilege;

/// Who may call a route or submit a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No credentials: only trading a password for a session.
    Public,
    /// Any authenticated principal (their own session and tokens).
    Anyone,
    Requires(Privilege),
}

impl Guard {
    pub fn privilege(self) -> Option<Privilege> {
        match self {
            Guard::Requires(p) => Some(p),
            Guard::Public | Guard::Anyone => None,
        }
    }
}

/// An entry of a route table.
pub trait Entry {
    fn method(&self) -> &'static str;
    fn path(&self) -> &'static str;
}

pub enum Lookup<'t, E> {
    Found(&'t E),
    /// The path exists, not with this method.
    WrongMethod,
    NotFound,
}

fn pattern(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The path's segments, as the tables match them.
pub fn segments(path: &str) -> Vec<&str> {
    pattern(path).collect()
}

/// The entry of `table` for `method` and the path's segments.
pub fn find<'t, E: Entry>(table: &'t [E], method: &str, segments: &[&str]) -> Lookup<'t, E> {
    let matches = |entry: &E| {
        pattern(entry.path()).count() == segments.len()
            && pattern(entry.path())
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == *s)
    };
    let mut path_known = false;
    for entry in table.iter().filter(|e| matches(e)) {
        if entry.method() == method {
            return Lookup::Found(entry);
        }
        path_known = true;
    }
    if path_known {
        Lookup::WrongMethod
    } else {
        Lookup::NotFound
    }
}

/// The segment that stood for `{name}` in `path`.
pub fn arg<'s>(path: &str, segments: &[&'s str], name: &str) -> &'s str {
    pattern(path)
        .zip(segments)
        .find(|(p, _)| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) == Some(name))
        .map(|(_, s)| *s)
        .expect("a handler asks only for its own route's arguments")
}

/// Each (method, path) once, and only known methods.
#[cfg(test)]
pub fn check_table<E: Entry>(table: &[E]) {
    let mut seen = std::collections::HashSet::new();
    for entry in table {
        assert!(
            seen.insert((entry.method(), entry.path())),
            "{} {} twice",
            entry.method(),
            entry.path()
        );
        assert!(
            ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&entry.method()),
            "{}",
            entry.method()
        );
    }
}
