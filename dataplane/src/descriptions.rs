//! Product descriptions written by a model: Amazon Nova Micro through
//! Bedrock's `InvokeModel` on AWS (the reference design's §5), or, where there
//! is no Bedrock, a built-in writer that needs no network. Both report the
//! tokens they used, which the tenant's plan pays for in AI credits.

use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use serde_json::{Value, json};

/// The model a Bedrock writer calls unless configured otherwise.
pub const DEFAULT_BEDROCK_MODEL: &str = "amazon.nova-micro-v1:0";
/// The name the built-in writer answers under: no model is involved.
pub const EMBEDDED_MODEL: &str = "indigo-embedded-1";
/// At most this many tokens of description.
const MAX_OUTPUT_TOKENS: u32 = 300;

const SYSTEM: &str = "You write short, factual product descriptions for an online store. \
                      Use only the facts given. Answer with the description alone.";

/// What a description is written from.
#[derive(Debug, Clone)]
pub struct ProductFacts {
    pub name: String,
    pub category: String,
    pub tags: Vec<String>,
    pub price_minor: i64,
    pub currency: String,
}

/// A written description and what writing it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub text: String,
    pub model: String,
    /// The AI service it is metered under: `bedrock` or `embedded`.
    pub service: &'static str,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriterError {
    #[error("the model service is throttling requests; try again shortly")]
    Throttled,
    #[error("the model service failed: {0}")]
    Failed(String),
}

pub enum DescriptionWriter {
    /// Deterministic sentences from the product's facts; no network.
    Embedded,
    Bedrock {
        client: aws_sdk_bedrockruntime::Client,
        model_id: String,
    },
}

impl DescriptionWriter {
    /// A writer calling `model_id` on Bedrock, configured from the standard
    /// AWS chain (region, credentials, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`).
    pub async fn bedrock(model_id: &str) -> Self {
        let config = aws_config::load_from_env().await;
        Self::Bedrock { client: aws_sdk_bedrockruntime::Client::new(&config), model_id: model_id.to_owned() }
    }

    pub async fn write(&self, facts: &ProductFacts) -> Result<Written, WriterError> {
        match self {
            Self::Embedded => Ok(embedded(facts)),
            Self::Bedrock { client, model_id } => invoke(client, model_id, facts).await,
        }
    }
}

/// The request Nova models take on `InvokeModel` (the `messages-v1` schema).
fn nova_request(facts: &ProductFacts) -> Value {
    json!({
        "schemaVersion": "messages-v1",
        "system": [{ "text": SYSTEM }],
        "messages": [{ "role": "user", "content": [{ "text": prompt(facts) }] }],
        "inferenceConfig": { "maxTokens": MAX_OUTPUT_TOKENS, "temperature": 0.5 }
    })
}

fn prompt(facts: &ProductFacts) -> String {
    let mut prompt = format!("Write a description of at most 80 words.\nProduct: {}", facts.name);
    if !facts.category.is_empty() {
        prompt.push_str(&format!("\nCategory: {}", facts.category));
    }
    if !facts.tags.is_empty() {
        prompt.push_str(&format!("\nTags: {}", facts.tags.join(", ")));
    }
    prompt.push_str(&format!("\nPrice: {}", price(facts)));
    prompt
}

fn price(facts: &ProductFacts) -> String {
    format!("{}.{:02} {}", facts.price_minor / 100, facts.price_minor % 100, facts.currency.to_uppercase())
}

async fn invoke(
    client: &aws_sdk_bedrockruntime::Client,
    model_id: &str,
    facts: &ProductFacts,
) -> Result<Written, WriterError> {
    let body = serde_json::to_vec(&nova_request(facts)).expect("a JSON value serializes");
    let answer = client
        .invoke_model()
        .model_id(model_id)
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(body))
        .send()
        .await
        .map_err(|error| match &error {
            SdkError::ServiceError(service) => match service.err() {
                InvokeModelError::ThrottlingException(_) | InvokeModelError::ServiceQuotaExceededException(_) => {
                    WriterError::Throttled
                }
                other => WriterError::Failed(other.to_string()),
            },
            other => WriterError::Failed(other.to_string()),
        })?;
    let answer: Value = serde_json::from_slice(answer.body().as_ref())
        .map_err(|e| WriterError::Failed(format!("the model's answer is not JSON: {e}")))?;
    let text = answer["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| part["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    let tokens = |name: &str| answer["usage"][name].as_u64().and_then(|n| u32::try_from(n).ok());
    match (text.trim(), tokens("inputTokens"), tokens("outputTokens")) {
        ("", ..) => Err(WriterError::Failed("the model answered no text".into())),
        (text, Some(input_tokens), Some(output_tokens)) => Ok(Written {
            text: text.to_owned(),
            model: model_id.to_owned(),
            service: "bedrock",
            input_tokens,
            output_tokens,
        }),
        _ => Err(WriterError::Failed("the model's answer carries no token usage".into())),
    }
}

/// The built-in writer: the same facts the model would be given, in plain
/// sentences. Its tokens are counted as a model's would be, at about four
/// characters a token, so a plan's AI credits run out the same way locally.
fn embedded(facts: &ProductFacts) -> Written {
    let mut text = facts.name.trim().to_owned();
    if !facts.category.trim().is_empty() {
        text.push_str(&format!(", from our {} range", facts.category.trim()));
    }
    text.push('.');
    match facts.tags.as_slice() {
        [] => {}
        [one] => text.push_str(&format!(" Chosen for {one}.")),
        [first @ .., last] => text.push_str(&format!(" Chosen for {} and {last}.", first.join(", "))),
    }
    text.push_str(&format!(" Yours for {}.", price(facts)));
    let input = SYSTEM.chars().count() + prompt(facts).chars().count();
    Written {
        input_tokens: estimated_tokens(input),
        output_tokens: estimated_tokens(text.chars().count()),
        text,
        model: EMBEDDED_MODEL.to_owned(),
        service: "embedded",
    }
}

fn estimated_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lamp() -> ProductFacts {
        ProductFacts {
            name: "Desk lamp".into(),
            category: "lighting".into(),
            tags: vec!["brass".into(), "reading".into(), "office".into()],
            price_minor: 4950,
            currency: "usd".into(),
        }
    }

    #[test]
    fn the_built_in_writer_says_the_facts_the_same_way_every_time() {
        let written = embedded(&lamp());
        assert_eq!(
            written.text,
            "Desk lamp, from our lighting range. Chosen for brass, reading and office. Yours for 49.50 USD."
        );
        assert_eq!(written, embedded(&lamp()));
        assert_eq!((written.service, written.model.as_str()), ("embedded", EMBEDDED_MODEL));
        assert_eq!(written.output_tokens, estimated_tokens(written.text.chars().count()));
        assert!(written.input_tokens > written.output_tokens, "the prompt is the longer part");
        let bare = ProductFacts { category: String::new(), tags: vec![], price_minor: 5, ..lamp() };
        assert_eq!(embedded(&bare).text, "Desk lamp. Yours for 0.05 USD.");
    }

    #[test]
    fn the_model_is_asked_in_novas_messages_schema_with_the_facts() {
        let request = nova_request(&lamp());
        assert_eq!(request["schemaVersion"], "messages-v1");
        assert_eq!(request["messages"][0]["role"], "user");
        let text = request["messages"][0]["content"][0]["text"].as_str().unwrap();
        for fact in ["Desk lamp", "lighting", "brass, reading, office", "49.50 USD"] {
            assert!(text.contains(fact), "{fact} missing from {text}");
        }
        assert_eq!(request["inferenceConfig"]["maxTokens"], MAX_OUTPUT_TOKENS);
    }
}
