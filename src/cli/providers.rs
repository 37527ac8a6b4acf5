//! `admin providers` and `admin factors --stranded`: the provider view of the accounts.

use super::table::{Align, Table};
use crate::domain::factors::providers::ProviderRow;
use crate::domain::operator::UserStatus;

pub(super) fn print_providers(rows: &[ProviderRow]) {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("KIND", Align::Left),
        ("STATUS", Align::Left),
        ("USERS", Align::Right),
        ("NAME", Align::Left),
    ]);
    for row in rows {
        let kind = if row.kind.is_empty() { "-".to_string() } else { row.kind.clone() };
        let name = if row.name.is_empty() { "-".to_string() } else { row.name.clone() };
        table.row(vec![row.id.clone(), kind, row.status.clone(), row.users.to_string(), name]);
    }
    print!("{}", table.render());
}

/// Accounts that had second factors and have none that count: every one of their factors
/// belongs to a disabled (or no longer configured) provider.
pub(super) fn print_stranded(users: &[UserStatus]) {
    let stranded: Vec<&UserStatus> =
        users.iter().filter(|u| u.factors.is_empty() && !u.turned_off.is_empty()).collect();
    if stranded.is_empty() {
        println!("no stranded accounts: everyone with second factors has one that counts");
        return;
    }
    let mut table = Table::new(&[("NAME", Align::Left), ("POLICY", Align::Left), ("TURNED OFF", Align::Left)]);
    for u in stranded {
        let policy = match (u.requirement.as_str(), u.required_from) {
            ("required", _) => "required: cannot sign in".to_string(),
            (_, Some(_)) => "required from a date: no 2FA until then".to_string(),
            (other, None) => format!("{other}: no 2FA now"),
        };
        table.row(vec![u.name.clone(), policy, u.turned_off.join(",")]);
    }
    print!("{}", table.render());
}
