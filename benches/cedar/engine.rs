//! The Cedar side of the comparison: `directive_core.cedar` with
//! entities and context built per request from the eligibility store, as an
//! engine using Cedar would.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression,
};

use clearance::decide::derived_countries;
use clearance::eligibility::Store;
use clearance::event::{AccessRequest, Outcome, UserRecord};
use clearance::policy::CompiledPolicy;

/// The Cedar policy set, with what is built once (as at policy load).
pub struct Cedar {
    policies: PolicySet,
    authorizer: Authorizer,
    action: EntityUid,
    user_type: EntityTypeName,
    model_type: EntityTypeName,
    /// Catalog models as entities (parents: the catalog and their tags).
    models: HashMap<String, Entity>,
    nationality_mode: clearance::policy::NationalityMode,
}

/// A request ready for `is_authorized`.
pub struct Prepared {
    request: Request,
    entities: Entities,
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn type_name(s: &str) -> EntityTypeName {
    match EntityTypeName::from_str(s) {
        Ok(t) => t,
        Err(e) => panic!("{s}: {e}"),
    }
}

impl Cedar {
    /// Parse the Cedar policy; build the catalog entities from `catalog`
    /// (the clearance policy whose models and nationality mode it mirrors).
    pub fn new(catalog: &CompiledPolicy) -> Cedar {
        let policies = match PolicySet::from_str(include_str!("directive_core.cedar")) {
            Ok(p) => p,
            Err(e) => panic!("directive_core.cedar: {e}"),
        };
        let (user_type, model_type) = (type_name("User"), type_name("Model"));
        let catalog_uid = uid(&type_name("Catalog"), "example");
        let tag_type = type_name("Tag");
        let models = catalog
            .model_ids()
            .into_iter()
            .filter_map(|id| catalog.model(id).map(|m| (id, m)))
            .map(|(id, m)| {
                let mut parents: HashSet<EntityUid> =
                    m.tags.iter().map(|t| uid(&tag_type, t)).collect();
                parents.insert(catalog_uid.clone());
                (
                    id.to_string(),
                    Entity::new_no_attrs(uid(&model_type, id), parents),
                )
            })
            .collect();
        Cedar {
            policies,
            authorizer: Authorizer::new(),
            action: uid(&type_name("Action"), "invoke"),
            user_type,
            model_type,
            models,
            nationality_mode: catalog.settings.nationality_mode,
        }
    }

    /// The principal entity of a subject (or of an unknown subject).
    fn principal(&self, id: &str, subject: Option<&UserRecord>) -> Entity {
        let countries = subject
            .map(|u| derived_countries(u, self.nationality_mode))
            .unwrap_or_default();
        let nationality_known = !countries.is_empty() && !countries.iter().any(|c| c == "??");
        let attrs = HashMap::from([
            (
                "known".to_string(),
                RestrictedExpression::new_bool(subject.is_some()),
            ),
            (
                "us_person".to_string(),
                RestrictedExpression::new_bool(
                    subject.is_some_and(|u| u.us_person_status.is_us_person()),
                ),
            ),
            (
                "revoked".to_string(),
                RestrictedExpression::new_bool(subject.is_some_and(|u| u.revocation.is_some())),
            ),
            (
                "nationality_known".to_string(),
                RestrictedExpression::new_bool(nationality_known),
            ),
            (
                "countries".to_string(),
                RestrictedExpression::new_set(
                    countries.into_iter().map(RestrictedExpression::new_string),
                ),
            ),
        ]);
        match Entity::new(uid(&self.user_type, id), attrs, HashSet::new()) {
            Ok(e) => e,
            Err(e) => panic!("principal entity: {e}"),
        }
    }

    fn context(req: &AccessRequest) -> Context {
        let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
        if let Some(g) = &req.geo {
            if let Some(c) = g
                .country
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                pairs.push(("country".into(), RestrictedExpression::new_string(c.into())));
            }
            if let Some(s) = g.subdivision.as_deref().map(str::trim) {
                pairs.push((
                    "subdivision".into(),
                    RestrictedExpression::new_string(s.into()),
                ));
                if let Some(sc) = s.get(..2) {
                    pairs.push((
                        "subdivision_country".into(),
                        RestrictedExpression::new_string(sc.into()),
                    ));
                }
            }
            if let Some(p) = &g.postal_code {
                let p: String = p
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_uppercase())
                    .collect();
                pairs.push(("postal_code".into(), RestrictedExpression::new_string(p)));
            }
        }
        match Context::from_pairs(pairs) {
            Ok(c) => c,
            Err(e) => panic!("context: {e}"),
        }
    }

    /// Build the Cedar request and entities for one request.
    pub fn prepare(&self, subject: Option<&UserRecord>, req: &AccessRequest) -> Prepared {
        let principal = self.principal(&req.subject_id, subject);
        let model = self.models.get(&req.model).cloned();
        let entities = match Entities::from_entities(std::iter::once(principal).chain(model), None)
        {
            Ok(e) => e,
            Err(e) => panic!("entities: {e}"),
        };
        let request = match Request::new(
            uid(&self.user_type, &req.subject_id),
            self.action.clone(),
            uid(&self.model_type, &req.model),
            Self::context(req),
            None,
        ) {
            Ok(r) => r,
            Err(e) => panic!("request: {e}"),
        };
        Prepared { request, entities }
    }

    /// Evaluate a prepared request.
    pub fn authorize(&self, p: &Prepared) -> Outcome {
        match self
            .authorizer
            .is_authorized(&p.request, &self.policies, &p.entities)
            .decision()
        {
            Decision::Allow => Outcome::Allow,
            Decision::Deny => Outcome::Deny,
        }
    }

    /// Evaluate a prepared request, asserting that no policy errored
    /// (Cedar skips a policy whose evaluation errors, which would make a
    /// forbid silently ineffective).
    pub fn authorize_checked(&self, p: &Prepared) -> Outcome {
        let r = self
            .authorizer
            .is_authorized(&p.request, &self.policies, &p.entities);
        let errors: Vec<String> = r.diagnostics().errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "Cedar evaluation errors: {errors:?}");
        match r.decision() {
            Decision::Allow => Outcome::Allow,
            Decision::Deny => Outcome::Deny,
        }
    }

    /// Look the subject up in the store, build the Cedar inputs, evaluate.
    pub fn lookup_and_authorize(&self, store: &Store, req: &AccessRequest) -> Outcome {
        let subject = store.user(&req.subject_id);
        self.authorize(&self.prepare(subject.as_deref(), req))
    }
}
