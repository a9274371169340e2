//! Recommendations from Amazon Personalize (the reference design's §5): the
//! tenant's own campaign, named in its settings, asked through
//! `GetRecommendations`. The caller falls back to the built-in recommender
//! when Personalize cannot answer.

use aws_sdk_personalizeruntime::Client;
use uuid::Uuid;

pub struct Personalize {
    client: Client,
}

/// What a recommendation starts from: a shopper, a product, or both.
#[derive(Debug, Clone, Copy)]
pub struct Seeds {
    pub customer: Option<Uuid>,
    pub product: Option<Uuid>,
}

impl Personalize {
    /// Configured from the standard AWS chain (region, credentials,
    /// `AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME`).
    pub async fn from_env() -> Self {
        Self::new(Client::new(&aws_config::load_from_env().await))
    }

    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Up to `limit` item ids, best first, with Personalize's scores.
    pub async fn recommend(&self, campaign_arn: &str, seeds: Seeds, limit: i64) -> Result<Vec<(Uuid, f64)>, String> {
        let answer = self
            .client
            .get_recommendations()
            .campaign_arn(campaign_arn)
            .set_user_id(seeds.customer.map(|id| id.to_string()))
            .set_item_id(seeds.product.map(|id| id.to_string()))
            .num_results(i32::try_from(limit).unwrap_or(100))
            .send()
            .await
            .map_err(|error| aws_sdk_personalizeruntime::error::DisplayErrorContext(error).to_string())?;
        // Item ids are the catalogue's product ids; anything else is not ours to show.
        Ok(answer
            .item_list()
            .iter()
            .filter_map(|item| Some((item.item_id()?.parse().ok()?, item.score().unwrap_or(0.0))))
            .collect())
    }
}
