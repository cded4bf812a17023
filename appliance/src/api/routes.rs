//! Every REST route, with the privilege it needs. The router answers 404
//! (or 405) for anything not listed here and checks the listed privilege
//! before any handler runs, so a route cannot be served without a declared
//! access check. `GET /api/v1/routes` lists them; the access tests walk it
//! as every built-in role. Operations check again, and check more (a
//! restore as a new VM also needs `create-vm`; a VM outside the caller's
//! policies is a 404).

use lifeboat_core::model::Privilege;
use Privilege::*;

pub struct Route {
    pub method: &'static str,
    /// `{…}` stands for one path segment.
    pub path: &'static str,
    /// `None`: any authenticated user (their own session and tokens).
    pub privilege: Option<Privilege>,
}

const fn r(method: &'static str, path: &'static str, privilege: Privilege) -> Route {
    Route {
        method,
        path,
        privilege: Some(privilege),
    }
}

const fn anyone(method: &'static str, path: &'static str) -> Route {
    Route {
        method,
        path,
        privilege: None,
    }
}

pub const ROUTES: &[Route] = &[
    anyone("DELETE", "/session"),
    anyone("GET", "/routes"),
    anyone("GET", "/privileges"),
    anyone("GET", "/tokens"),
    anyone("POST", "/tokens"),
    anyone("DELETE", "/tokens/{id}"),
    r("POST", "/enrollment-tokens", ManageHosts),
    r("GET", "/hosts", View),
    r("GET", "/hosts/{id}", View),
    r("GET", "/hosts/{id}/ha", View),
    r("PUT", "/hosts/{id}/ha", ManageHa),
    r("GET", "/vms", View),
    r("GET", "/vms/{id}", View),
    r("POST", "/vms/{id}/power", Power),
    r("GET", "/vms/{id}/backups", View),
    r("POST", "/vms/{id}/backups", Backup),
    r("GET", "/vms/{id}/ha", View),
    r("PUT", "/vms/{id}/ha", ManageHa),
    r("GET", "/vms/{id}/categories", View),
    r("PUT", "/vms/{id}/categories", ManageUsers),
    r("GET", "/datastores", View),
    r("POST", "/datastores", ManageDatastores),
    r("GET", "/datastores/{name}", View),
    r("DELETE", "/datastores/{name}", ManageDatastores),
    r("POST", "/datastores/{name}/mount", ManageDatastores),
    r("GET", "/backups/{ref}", View),
    r("PUT", "/backups/{ref}", Backup),
    r("PATCH", "/backups/{ref}", Backup),
    r("POST", "/backups/{ref}/verify", Backup),
    r("POST", "/backups/{ref}/restore", Restore),
    r("GET", "/backup-policies", View),
    r("POST", "/backup-policies", Backup),
    r("GET", "/backup-policies/{id}", View),
    r("PUT", "/backup-policies/{id}", Backup),
    r("DELETE", "/backup-policies/{id}", Backup),
    r("POST", "/backup-policies/{id}/run", Backup),
    r("GET", "/jobs", View),
    r("GET", "/jobs/{id}", View),
    r("GET", "/cluster", View),
    r("GET", "/ha/settings", View),
    r("PUT", "/ha/settings", ManageHa),
    r("GET", "/ha/events", View),
    r("GET", "/failovers", View),
    r("GET", "/failovers/{id}", View),
    r("GET", "/physical-machines", View),
    r("POST", "/physical-machines", ManageHa),
    r("GET", "/physical-machines/{id}", View),
    r("DELETE", "/physical-machines/{id}", ManageHa),
    r("POST", "/physical-machines/{id}/failback", ManageHa),
    r("GET", "/users", ManageUsers),
    r("POST", "/users", ManageUsers),
    r("GET", "/users/{name}", ManageUsers),
    r("PUT", "/users/{name}", ManageUsers),
    r("PATCH", "/users/{name}", ManageUsers),
    r("DELETE", "/users/{name}", ManageUsers),
    r("GET", "/roles", View),
    r("POST", "/roles", ManageUsers),
    r("GET", "/roles/{name}", View),
    r("PUT", "/roles/{name}", ManageUsers),
    r("DELETE", "/roles/{name}", ManageUsers),
    r("GET", "/policies", ManageUsers),
    r("POST", "/policies", ManageUsers),
    r("GET", "/policies/{name}", ManageUsers),
    r("PUT", "/policies/{name}", ManageUsers),
    r("DELETE", "/policies/{name}", ManageUsers),
    r("GET", "/category-rules", View),
    r("POST", "/category-rules", ManageUsers),
    r("DELETE", "/category-rules/{id}", ManageUsers),
    r("GET", "/directories", ManageUsers),
    r("POST", "/directories", ManageUsers),
    r("GET", "/directories/{name}", ManageUsers),
    r("PUT", "/directories/{name}", ManageUsers),
    r("DELETE", "/directories/{name}", ManageUsers),
    r("GET", "/audit", ViewReports),
];

pub enum Lookup {
    Found(&'static Route),
    /// The path exists, not with this method.
    WrongMethod,
    NotFound,
}

/// The route for `method` and the path's segments (below `/api/v1`).
pub fn find(method: &str, segments: &[&str]) -> Lookup {
    let matches = |route: &Route| {
        let pattern: Vec<&str> = route.path.split('/').filter(|s| !s.is_empty()).collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == s)
    };
    let mut path_known = false;
    for route in ROUTES.iter().filter(|r| matches(r)) {
        if route.method == method {
            return Lookup::Found(route);
        }
        path_known = true;
    }
    if path_known {
        Lookup::WrongMethod
    } else {
        Lookup::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_pattern_and_never_listed_twice() {
        assert!(
            matches!(find("POST", &["vms", "abc", "power"]), Lookup::Found(r) if r.privilege == Some(Power))
        );
        assert!(matches!(
            find("DELETE", &["vms", "abc", "power"]),
            Lookup::WrongMethod
        ));
        assert!(matches!(find("GET", &["nowhere"]), Lookup::NotFound));
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
        }
    }
}
