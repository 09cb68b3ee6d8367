//! The route catalog and the counterfactual policy: which route a request is
//! shadowed to when the router took another.
//!
//! Pure: built once from config (API keys are read here, from env or file).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, Secret};
use crate::record::RouteInfo;

/// One upstream route, ready to call.
#[derive(Debug, Clone)]
pub struct Route {
    pub info: RouteInfo,
    pub url: String,
    pub timeout: Duration,
    pub api_key: Option<Secret>,
    pub counterfactual: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("route_taken `{0}` is not in the route catalog")]
    UnknownRouteTaken(String),
    #[error("route_taken must not be empty")]
    EmptyRouteTaken,
    #[error("shadow_route `{0}` is not in the route catalog")]
    UnknownShadowRoute(String),
    #[error("shadow_route `{0}` is the route taken; nothing to compare")]
    ShadowIsTaken(String),
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    routes: HashMap<String, Arc<Route>>,
}

impl Catalog {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut routes = HashMap::new();
        for (name, r) in &config.routes {
            routes.insert(
                name.clone(),
                Arc::new(Route {
                    info: RouteInfo {
                        name: name.clone(),
                        model: r.model.clone(),
                        input_usd_per_mtok: r.input_usd_per_mtok,
                        output_usd_per_mtok: r.output_usd_per_mtok,
                    },
                    url: r.url.clone(),
                    timeout: r.timeout,
                    api_key: r.api_key(name)?,
                    counterfactual: r.counterfactual.clone(),
                }),
            );
        }
        Ok(Self { routes })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.get(name)
    }

    /// The route taken and the route to shadow to; `Ok(None)` for the second when
    /// the route taken has no counterfactual and the request names none.
    pub fn resolve(
        &self,
        route_taken: &str,
        shadow_override: &str,
    ) -> Result<(Arc<Route>, Option<Arc<Route>>), RouteError> {
        if route_taken.is_empty() {
            return Err(RouteError::EmptyRouteTaken);
        }
        let taken = self.routes.get(route_taken).ok_or_else(|| RouteError::UnknownRouteTaken(route_taken.into()))?;
        let shadow_name = if shadow_override.is_empty() { taken.counterfactual.as_deref() } else { Some(shadow_override) };
        let Some(shadow_name) = shadow_name else {
            return Ok((taken.clone(), None));
        };
        if shadow_name == route_taken {
            return Err(RouteError::ShadowIsTaken(shadow_name.into()));
        }
        let shadow = self.routes.get(shadow_name).ok_or_else(|| RouteError::UnknownShadowRoute(shadow_name.into()))?;
        Ok((taken.clone(), Some(shadow.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let c = crate::config::from_toml(
            r#"
            [routes.fast]
            url = "http://127.0.0.1:1/v1/chat/completions"
            model = "small"
            counterfactual = "reasoning"
            [routes.reasoning]
            url = "http://127.0.0.1:2/v1/chat/completions"
            model = "big"
            counterfactual = "fast"
            [routes.cheap]
            url = "http://127.0.0.1:3/v1/chat/completions"
            model = "tiny"
            "#,
        )
        .unwrap();
        Catalog::from_config(&c).unwrap()
    }

    #[test]
    fn counterfactual_is_the_other_route() {
        let (t, s) = catalog().resolve("fast", "").unwrap();
        assert_eq!((t.info.name.as_str(), s.unwrap().info.model.as_str()), ("fast", "big"));
        let (_, s) = catalog().resolve("reasoning", "").unwrap();
        assert_eq!(s.unwrap().info.name, "fast");
    }

    #[test]
    fn override_wins_and_missing_counterfactual_is_none() {
        let (_, s) = catalog().resolve("fast", "cheap").unwrap();
        assert_eq!(s.unwrap().info.name, "cheap");
        let (_, s) = catalog().resolve("cheap", "").unwrap();
        assert!(s.is_none());
    }

    #[test]
    fn unknown_routes_are_errors() {
        let c = catalog();
        assert_eq!(c.resolve("turbo", "").unwrap_err(), RouteError::UnknownRouteTaken("turbo".into()));
        assert_eq!(c.resolve("fast", "turbo").unwrap_err(), RouteError::UnknownShadowRoute("turbo".into()));
        assert_eq!(c.resolve("fast", "fast").unwrap_err(), RouteError::ShadowIsTaken("fast".into()));
        assert_eq!(c.resolve("", "").unwrap_err(), RouteError::EmptyRouteTaken);
    }
}
