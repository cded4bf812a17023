//! Every REST route in one table: method, path, who may call it and the
//! handler, together in one entry, so a route cannot be served without its
//! access check and the check cannot drift from the dispatch. The router
//! answers 404 (or 405) for anything not listed and checks the entry's
//! privilege before the handler runs. `GET /api/v1/routes` lists the table;
//! the access tests walk it as every role. Operations check again, and
//! check more (a restore as a new VM also needs `create-vm`; a VM outside
//! the caller's policies is a 404).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lifeboat_core::model::{Principal, Privilege};
use lifeboat_core::ops::{Ops, OpsError};
use Privilege::*;

use super::{access, alerts, backups, ha, inventory, logging, metrics};
pub use crate::http::routing::Guard;
use crate::http::routing::{self, Entry, Lookup};
use crate::http::{Body, Req};

/// What a handler gets: the caller (checked against the route's guard),
/// the request and the path's `{…}` segments.
pub struct Call<'a> {
    pub ops: &'a Arc<Ops>,
    /// `None` only on a [`Guard::Public`] route.
    who: Option<&'a Principal>,
    pub req: &'a Req,
    route: &'static Route,
    segments: &'a [&'a str],
}

impl<'a> Call<'a> {
    /// The authenticated caller.
    pub fn who(&self) -> &'a Principal {
        self.who
            .expect("only public routes are called without a principal")
    }

    /// The path segment that stood for `{name}` in the route's pattern.
    pub fn arg(&self, name: &str) -> &'a str {
        routing::arg(self.route.path, self.segments, name)
    }
}

pub type Reply = Result<hyper::Response<Body>, OpsError>;
pub type Handler = for<'a> fn(Call<'a>) -> Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

pub struct Route {
    pub method: &'static str,
    /// `{…}` stands for one path segment.
    pub path: &'static str,
    pub guard: Guard,
    pub handler: Handler,
    /// The handler's path (`inventory::power`): the operation's id.
    pub name: &'static str,
    /// The media types of its successful answers.
    pub produces: &'static [&'static str],
}

impl Route {
    pub fn call<'a>(
        &'static self,
        ops: &'a Arc<Ops>,
        who: Option<&'a Principal>,
        req: &'a Req,
        segments: &'a [&'a str],
    ) -> Pin<Box<dyn Future<Output = Reply> + Send + 'a>> {
        (self.handler)(Call {
            ops,
            who,
            req,
            route: self,
            segments,
        })
    }
}

/// `route!(GET "/path", guard => handler)`, where guard is `public`,
/// `anyone` or a privilege; `… => handler, produces ["text/csv", …]` for a
/// route that answers other than JSON.
macro_rules! route {
    ($method:ident $path:literal, public => $handler:path) => {
        route!(@ $method $path, Guard::Public, $handler, JSON)
    };
    ($method:ident $path:literal, anyone => $handler:path) => {
        route!(@ $method $path, Guard::Anyone, $handler, JSON)
    };
    ($method:ident $path:literal, $privilege:ident => $handler:path) => {
        route!(@ $method $path, Guard::Requires($privilege), $handler, JSON)
    };
    ($method:ident $path:literal, $privilege:ident => $handler:path, produces $types:expr) => {
        route!(@ $method $path, Guard::Requires($privilege), $handler, $types)
    };
    (@ $method:ident $path:literal, $guard:expr, $handler:path, $types:expr) => {
        Route {
            method: stringify!($method),
            path: $path,
            guard: $guard,
            handler: |call| Box::pin($handler(call)),
            name: stringify!($handler),
            produces: $types,
        }
    };
}

/// What most routes answer.
const JSON: &[&str] = &["application/json"];

pub static ROUTES: &[Route] = &[
    route!(POST "/session", public => access::login),
    route!(DELETE "/session", anyone => access::logout),
    route!(GET "/routes", anyone => list_routes),
    route!(GET "/openapi.json", anyone => super::openapi::document),
    route!(GET "/privileges", anyone => access::privileges),
    route!(GET "/tokens", anyone => access::tokens),
    route!(POST "/tokens", anyone => access::create_token),
    route!(DELETE "/tokens/{id}", anyone => access::revoke_token),
    route!(POST "/enrollment-tokens", ManageHosts => inventory::issue_enrollment_token),
    route!(GET "/hosts", View => inventory::hosts),
    route!(GET "/hosts/{id}", View => inventory::host),
    route!(GET "/hosts/{id}/ha", View => ha::host_ha),
    route!(GET "/hosts/{id}/metrics", View => metrics::host_series),
    route!(GET "/hosts/{id}/metrics/current", View => metrics::host_current),
    route!(PUT "/hosts/{id}/ha", ManageHa => ha::set_host_ha),
    route!(GET "/vms", View => inventory::vms),
    route!(GET "/vms/{id}", View => inventory::vm),
    route!(POST "/vms/{id}/power", Power => inventory::power),
    route!(GET "/vms/{id}/backups", View => backups::vm_backups),
    route!(POST "/vms/{id}/backups", Backup => backups::backup_vm),
    route!(GET "/vms/{id}/ha", View => ha::vm_ha),
    route!(GET "/vms/{id}/metrics", View => metrics::vm_series),
    route!(GET "/vms/{id}/metrics/current", View => metrics::vm_current),
    route!(GET "/metrics", View => metrics::prometheus, produces &["text/plain"]),
    route!(GET "/metrics/estate", View => metrics::estate),
    route!(GET "/metrics/settings", View => metrics::settings),
    route!(PUT "/metrics/settings", ManageHosts => metrics::set_settings),
    route!(GET "/sql-export", Administer => metrics::sql_export),
    route!(PUT "/sql-export", Administer => metrics::set_sql_export),
    route!(DELETE "/sql-export", Administer => metrics::delete_sql_export),
    route!(GET "/snmp", Administer => metrics::snmp_settings),
    route!(PUT "/snmp", Administer => metrics::set_snmp_settings),
    route!(GET "/alerts", View => alerts::list),
    route!(GET "/alerts/{id}", View => alerts::get),
    route!(GET "/alert-rules", View => alerts::rules),
    route!(POST "/alert-rules", Administer => alerts::create_rule),
    route!(PUT "/alert-rules/{id}", Administer => alerts::update_rule),
    route!(DELETE "/alert-rules/{id}", Administer => alerts::delete_rule),
    route!(GET "/alert-channels", Administer => alerts::channels),
    route!(POST "/alert-channels", Administer => alerts::create_channel),
    route!(PUT "/alert-channels/{id}", Administer => alerts::update_channel),
    route!(DELETE "/alert-channels/{id}", Administer => alerts::delete_channel),
    route!(POST "/alert-channels/{id}/test", Administer => alerts::test_channel),
    route!(GET "/logging", Administer => logging::settings),
    route!(PUT "/logging", Administer => logging::set_settings),
    route!(GET "/logs", Administer => logging::recent),
    route!(PUT "/vms/{id}/ha", ManageHa => ha::set_vm_ha),
    route!(GET "/vms/{id}/categories", View => access::vm_categories),
    route!(PUT "/vms/{id}/categories", ManageUsers => access::set_vm_categories),
    route!(GET "/datastores", View => backups::datastores),
    route!(POST "/datastores", ManageDatastores => backups::add_datastore),
    route!(GET "/datastores/{name}", View => backups::datastore),
    route!(DELETE "/datastores/{name}", ManageDatastores => backups::delete_datastore),
    route!(POST "/datastores/{name}/mount", ManageDatastores => backups::mount_datastore),
    route!(GET "/backups/{ref}", View => backups::backup),
    route!(PUT "/backups/{ref}", Backup => backups::set_protected),
    route!(PATCH "/backups/{ref}", Backup => backups::set_protected),
    route!(DELETE "/backups/{ref}", DeleteBackup => backups::delete_backup),
    route!(POST "/backups/{ref}/verify", Backup => backups::verify),
    route!(POST "/backups/{ref}/restore", Restore => backups::restore),
    route!(POST "/backups/{ref}/boot-verify", Restore => backups::boot_verify),
    route!(GET "/backups/{ref}/boot-screenshot", View => backups::boot_screenshot,
        produces &["image/png", "image/x-portable-pixmap"]),
    route!(GET "/backup-policies", View => backups::policies),
    route!(POST "/backup-policies", Backup => backups::create_policy),
    route!(GET "/backup-policies/{id}", View => backups::policy),
    route!(PUT "/backup-policies/{id}", Backup => backups::update_policy),
    route!(DELETE "/backup-policies/{id}", Backup => backups::delete_policy),
    route!(POST "/backup-policies/{id}/run", Backup => backups::run_policy),
    route!(GET "/jobs", View => inventory::jobs),
    route!(GET "/jobs/{id}", View => inventory::job),
    route!(GET "/cluster", View => ha::cluster),
    route!(GET "/ha/settings", View => ha::settings),
    route!(PUT "/ha/settings", ManageHa => ha::set_settings),
    route!(GET "/ha/events", View => ha::events),
    route!(GET "/failovers", View => ha::failovers),
    route!(GET "/failovers/{id}", View => ha::failover),
    route!(GET "/physical-machines", View => ha::physical_machines),
    route!(POST "/physical-machines", ManageHa => ha::add_physical_machine),
    route!(GET "/physical-machines/{id}", View => ha::physical_machine),
    route!(DELETE "/physical-machines/{id}", ManageHa => ha::delete_physical_machine),
    route!(POST "/physical-machines/{id}/failback", ManageHa => ha::failback),
    route!(GET "/users", ManageUsers => access::users),
    route!(POST "/users", ManageUsers => access::create_user),
    route!(GET "/users/{name}", ManageUsers => access::user),
    route!(PUT "/users/{name}", ManageUsers => access::update_user),
    route!(PATCH "/users/{name}", ManageUsers => access::update_user),
    route!(DELETE "/users/{name}", ManageUsers => access::delete_user),
    route!(GET "/roles", View => access::roles),
    route!(POST "/roles", ManageUsers => access::create_role),
    route!(GET "/roles/{name}", View => access::role),
    route!(PUT "/roles/{name}", ManageUsers => access::update_role),
    route!(DELETE "/roles/{name}", ManageUsers => access::delete_role),
    route!(GET "/policies", ManageUsers => access::policies),
    route!(POST "/policies", ManageUsers => access::create_policy),
    route!(GET "/policies/{name}", ManageUsers => access::policy),
    route!(PUT "/policies/{name}", ManageUsers => access::update_policy),
    route!(DELETE "/policies/{name}", ManageUsers => access::delete_policy),
    route!(GET "/category-rules", View => access::category_rules),
    route!(POST "/category-rules", ManageUsers => access::add_category_rule),
    route!(DELETE "/category-rules/{id}", ManageUsers => access::delete_category_rule),
    route!(GET "/directories", ManageUsers => access::directories),
    route!(POST "/directories", ManageUsers => access::create_directory),
    route!(GET "/directories/{name}", ManageUsers => access::directory),
    route!(PUT "/directories/{name}", ManageUsers => access::update_directory),
    route!(DELETE "/directories/{name}", ManageUsers => access::delete_directory),
    route!(GET "/audit", ViewReports => access::audit),
    route!(GET "/exports/{table}", ViewReports => metrics::export,
        produces &["text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "text/html", "application/json", "text/x-ms-iqy"]),
];

async fn list_routes(_: Call<'_>) -> Reply {
    let list: Vec<_> = ROUTES
        .iter()
        .filter(|r| r.guard != Guard::Public)
        .map(|r| {
            serde_json::json!({
                "method": r.method,
                "path": r.path,
                "privilege": r.guard.privilege().map(|p| p.as_str()),
            })
        })
        .collect();
    Ok(crate::http::json(
        hyper::StatusCode::OK,
        &serde_json::json!(list),
    ))
}

impl Entry for Route {
    fn method(&self) -> &'static str {
        self.method
    }
    fn path(&self) -> &'static str {
        self.path
    }
}

/// The route for `method` and the path's segments (below `/api/v1`).
pub fn find(method: &str, segments: &[&str]) -> Lookup<'static, Route> {
    routing::find(ROUTES, method, segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_pattern_and_never_listed_twice() {
        assert!(
            matches!(find("POST", &["vms", "abc", "power"]), Lookup::Found(r) if r.guard == Guard::Requires(Power))
        );
        assert!(matches!(
            find("DELETE", &["vms", "abc", "power"]),
            Lookup::WrongMethod
        ));
        assert!(matches!(find("GET", &["nowhere"]), Lookup::NotFound));
        routing::check_table(ROUTES);
    }

    #[test]
    fn only_the_login_is_public() {
        let public: Vec<_> = ROUTES
            .iter()
            .filter(|r| r.guard == Guard::Public)
            .map(|r| (r.method, r.path))
            .collect();
        assert_eq!(public, [("POST", "/session")]);
    }
}
