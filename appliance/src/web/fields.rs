//! Settings forms people can read: fieldsets of labelled fields, one per
//! row, each with its unit and a one-line help. When a submission is
//! refused the console shows the same page again (400) with what was
//! entered back in its fields — never a password — and the reason next to
//! the field it is about, or above the form when it names none.

use maud::{html, Markup};

use super::layout::PageCtx;

/// A refused submission: which form, what was entered, why.
pub struct Refused {
    pub action: String,
    pub values: Vec<(String, String)>,
    /// The field the reason is about, when it names one of the form's.
    pub field: Option<String>,
    pub reason: String,
}

impl Refused {
    /// The field a reason is about: its first word, if the form sent a
    /// field of that name (`misses must be …`, `url: …`).
    pub fn new(action: &str, values: &[(String, String)], reason: String) -> Refused {
        let first = reason
            .split(|c: char| c == ':' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        let field = values
            .iter()
            .find(|(k, _)| k == first && k != "csrf")
            .map(|(k, _)| k.clone());
        Refused {
            action: action.to_string(),
            values: values.to_vec(),
            field,
            reason,
        }
    }
}

enum Kind {
    Text,
    Number,
    Password,
    Textarea(u32),
    Select(Vec<(String, String)>),
    Checkbox,
}

/// One labelled field.
pub struct Field<'a> {
    name: &'a str,
    label: &'a str,
    kind: Kind,
    value: String,
    unit: Option<&'a str>,
    help: Option<&'a str>,
    required: bool,
    placeholder: Option<&'a str>,
    range: Option<(i64, i64)>,
}

impl<'a> Field<'a> {
    fn new(name: &'a str, label: &'a str, kind: Kind, value: String) -> Field<'a> {
        Field {
            name,
            label,
            kind,
            value,
            unit: None,
            help: None,
            required: false,
            placeholder: None,
            range: None,
        }
    }

    pub fn text(name: &'a str, label: &'a str, value: impl ToString) -> Field<'a> {
        Field::new(name, label, Kind::Text, value.to_string())
    }

    pub fn number(name: &'a str, label: &'a str, value: impl ToString) -> Field<'a> {
        Field::new(name, label, Kind::Number, value.to_string())
    }

    /// Never shows a value, entered or stored.
    pub fn password(name: &'a str, label: &'a str) -> Field<'a> {
        Field::new(name, label, Kind::Password, String::new())
    }

    pub fn textarea(name: &'a str, label: &'a str, rows: u32, value: impl ToString) -> Field<'a> {
        Field::new(name, label, Kind::Textarea(rows), value.to_string())
    }

    /// `options`: (value, label); `value` the selected one.
    pub fn select(
        name: &'a str,
        label: &'a str,
        options: &[(&str, &str)],
        value: impl ToString,
    ) -> Field<'a> {
        let options = options
            .iter()
            .map(|(v, l)| (v.to_string(), l.to_string()))
            .collect();
        Field::new(name, label, Kind::Select(options), value.to_string())
    }

    pub fn checkbox(name: &'a str, label: &'a str, checked: bool) -> Field<'a> {
        let value = if checked { "on" } else { "" };
        Field::new(name, label, Kind::Checkbox, value.to_string())
    }

    pub fn unit(mut self, unit: &'a str) -> Self {
        self.unit = Some(unit);
        self
    }

    pub fn help(mut self, help: &'a str) -> Self {
        self.help = Some(help);
        self
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn placeholder(mut self, placeholder: &'a str) -> Self {
        self.placeholder = Some(placeholder);
        self
    }

    pub fn range(mut self, min: i64, max: i64) -> Self {
        self.range = Some((min, max));
        self
    }
}

/// A form being drawn, knowing whether it is the one just refused.
pub struct Form<'a> {
    action: String,
    csrf: &'a str,
    refused: Option<&'a Refused>,
}

impl<'a> Form<'a> {
    pub fn new(ctx: &PageCtx<'a>, action: impl Into<String>) -> Form<'a> {
        Form::with(action.into(), ctx.csrf, ctx.refused)
    }

    fn with(action: String, csrf: &'a str, refused: Option<&'a Refused>) -> Form<'a> {
        let refused = refused.filter(|r| r.action == action);
        Form {
            action,
            csrf,
            refused,
        }
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    /// The CSRF field, and the reason of a refusal that names no field.
    pub fn head(&self) -> Markup {
        html! {
            input type="hidden" name="csrf" value=(self.csrf);
            @if let Some(r) = self.refused.filter(|r| r.field.is_none()) {
                p.form-error role="alert" { "Not saved: " (r.reason) }
            }
        }
    }

    fn entered(&self, name: &str) -> Option<Vec<&str>> {
        self.refused.map(|r| {
            r.values
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        })
    }

    /// Whether a repeated checkbox (`privilege=…`) shows ticked.
    pub fn ticked(&self, name: &str, value: &str, stored: bool) -> bool {
        match self.entered(name) {
            Some(values) => values.contains(&value),
            None => stored,
        }
    }

    pub fn row(&self, f: Field) -> Markup {
        let id = format!("f-{}-{}", self.action.replace('/', "-"), f.name);
        let help_id = format!("{id}-help");
        let error = self
            .refused
            .filter(|r| r.field.as_deref() == Some(f.name))
            .map(|r| r.reason.as_str());
        let entered = self.entered(f.name);
        let value = match (&f.kind, &entered) {
            (Kind::Password, _) => String::new(),
            (Kind::Checkbox, Some(v)) => if v.is_empty() { "" } else { "on" }.to_string(),
            (_, Some(v)) => v.first().copied().unwrap_or_default().to_string(),
            (_, None) => f.value.clone(),
        };
        let (min, max) = f.range.unzip();
        let input = match &f.kind {
            Kind::Textarea(rows) => html! {
                textarea id=(id) name=(f.name) rows=(rows) required[f.required]
                    placeholder=[f.placeholder] aria-describedby=(help_id) aria-invalid=[error.map(|_| "true")] { (value) }
            },
            Kind::Select(options) => html! {
                select id=(id) name=(f.name) aria-describedby=(help_id) aria-invalid=[error.map(|_| "true")] {
                    @for (v, l) in options { option value=(v) selected[*v == value] { (l) } }
                }
            },
            Kind::Checkbox => html! {
                input type="checkbox" id=(id) name=(f.name) checked[!value.is_empty()]
                    aria-describedby=(help_id);
            },
            kind => {
                let (kind, autocomplete) = match kind {
                    Kind::Number => ("number", None),
                    Kind::Password => ("password", Some("new-password")),
                    _ => ("text", None),
                };
                html! {
                    input type=(kind) id=(id) name=(f.name) value=(value) required[f.required]
                        min=[min] max=[max] placeholder=[f.placeholder] autocomplete=[autocomplete]
                        aria-describedby=(help_id) aria-invalid=[error.map(|_| "true")];
                }
            }
        };
        html! {
            div.field.invalid[error.is_some()] {
                label for=(id) { (f.label) }
                div.control {
                    // The unit column is kept when empty, so fields line up.
                    div.input {
                        (input)
                        @if !matches!(f.kind, Kind::Checkbox) { span.unit { (f.unit.unwrap_or_default()) } }
                    }
                    @if let Some(h) = f.help { p.help id=(help_id) { (h) } }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_reason_is_placed_at_the_field_it_names_first() {
        let v = values(&[("csrf", "x"), ("misses", "0"), ("url", "postgresql://")]);
        let r = Refused::new("/a", &v, "misses must be between 1 and 100".into());
        assert_eq!(r.field.as_deref(), Some("misses"));
        let r = Refused::new("/a", &v, "url: name the user".into());
        assert_eq!(r.field.as_deref(), Some("url"));
        let r = Refused::new("/a", &v, "permission denied".into());
        assert_eq!(r.field, None);
        let r = Refused::new("/a", &v, "csrf is odd".into());
        assert_eq!(r.field, None);
    }

    #[test]
    fn a_refused_form_shows_what_was_entered_but_never_a_password() {
        let v = values(&[("misses", "0"), ("secret", "hunter2-long"), ("flag", "on")]);
        let refused = Refused::new("/a", &v, "misses must be between 1 and 100".into());
        let form = Form::with("/a".into(), "tok", Some(&refused));
        let html = form.row(Field::number("misses", "Misses", 3)).into_string();
        assert!(html.contains(r#"value="0""#), "{html}");
        assert!(html.contains("must be between 1 and 100"), "{html}");
        assert!(html.contains("invalid"), "{html}");
        let html = form.row(Field::password("secret", "Secret")).into_string();
        assert!(!html.contains("hunter2"), "{html}");
        let html = form
            .row(Field::checkbox("flag", "Flag", false))
            .into_string();
        assert!(html.contains("checked"), "{html}");
        // Another form on the page keeps its stored values.
        let other = Form::with("/b".into(), "tok", Some(&refused));
        let html = other
            .row(Field::number("misses", "Misses", 3))
            .into_string();
        assert!(
            html.contains(r#"value="3""#) && !html.contains("alert"),
            "{html}"
        );
    }
}
