//! Billing at Stripe: a customer and a subscription per tenant, a product and a
//! price per plan (created once, found again by id and lookup key), and the
//! billing meters that metered usage is reported to. Each subscription also
//! has a metered item per meter, at the price `[usage_prices]` of the plans
//! file gives it (zero unless set: the plans' prices include usage up to their
//! limits): Stripe then puts what each meter counted in the period on every
//! invoice, where the parity job compares it with Indigo's own totals.
//!
//! Every call that creates or changes something carries an idempotency key
//! chosen by the caller (a workflow step passes its own), so a retried step
//! never makes a second customer or subscription.

use std::collections::HashMap;

use indigo_core::plan::{Plan, PlanCatalog};
use indigo_core::tenant::TenantId;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::InvoiceStatus;
use stripe_billing::billing_meter::{
    CreateBillingMeter, CreateBillingMeterDefaultAggregation, CreateBillingMeterDefaultAggregationFormula,
    ListBillingMeter,
};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow,
};
use stripe_billing::invoice::{
    CreatePreviewInvoice, CreatePreviewInvoiceSubscriptionDetails, CreatePreviewInvoiceSubscriptionDetailsItems,
    CreatePreviewInvoiceSubscriptionDetailsProrationBehavior, ListInvoice,
};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, RetrieveSubscription, UpdateSubscription,
    UpdateSubscriptionItems, UpdateSubscriptionProrationBehavior,
};
use stripe_core::customer::{CreateCustomer, DeleteCustomer, RetrieveCustomer, RetrieveCustomerReturned};
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, CreatePriceRecurringUsageType, ListPrice,
    RetrievePrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct};
use tokio::sync::Mutex;

use crate::config::StripeConfig;

/// A Stripe billing meter: what usage it sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    /// The meter's `event_name`, which meter events name.
    pub event_name: &'static str,
    pub display_name: &'static str,
    /// The usage event type whose hourly roll-ups it bills.
    pub usage: &'static str,
}

/// The meter storefront API calls are reported to.
pub const API_CALLS_METER: &str = "indigo_api_calls";

/// Every metered usage billed through Stripe: storefront API calls, and AI
/// requests in credits (their quantity, priced from tokens by `policies/costs.toml`).
pub const METERS: &[Meter] = &[
    Meter { event_name: API_CALLS_METER, display_name: "Indigo storefront API calls", usage: "api_call" },
    Meter { event_name: "indigo_ai_credits", display_name: "Indigo AI credits", usage: "ai_request" },
];

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Worth retrying: Stripe unreachable, rate limited, 5xx, lock timeouts.
    #[error("Stripe is unavailable: {0}")]
    Transient(String),
    /// Stripe refused the request; retrying the same request will not help.
    #[error("Stripe refused the request ({status}): {message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("Stripe answered something unexpected: {0}")]
    Unexpected(String),
}

impl From<StripeError> for BillingError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Stripe(api, status) if status == 429 || status == 409 || status >= 500 => {
                Self::Transient(format!("{status}: {}", api.message.unwrap_or_default()))
            }
            StripeError::Stripe(api, status) => Self::Rejected {
                status,
                code: api.code.map(|c| c.as_str().to_owned()).unwrap_or_else(|| "none".into()),
                message: api.message.unwrap_or_else(|| "no message".into()),
            },
            StripeError::ClientError(e) => Self::Transient(e),
            StripeError::Timeout => Self::Transient("timed out".into()),
            StripeError::JSONDeserialize(e) => Self::Unexpected(e),
            StripeError::ConfigError(e) => Self::Unexpected(e),
        }
    }
}

impl BillingError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Rejected { status: 404, .. })
    }
}

/// A meter event's value: whole numbers as such, others with six decimals at most.
pub fn meter_value(value: f64) -> String {
    if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.6}").trim_end_matches('0').to_owned() }
}

/// For removals: what is already gone counts as removed, so a retried step succeeds.
fn gone_is_done<T>(result: Result<T, StripeError>) -> Result<(), BillingError> {
    match result.map_err(BillingError::from) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// One metered line of a finalized invoice.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoicedUsage {
    pub invoice: String,
    /// The meter's event name.
    pub meter: &'static str,
    /// The line's period (Unix seconds, end excluded).
    pub period: (i64, i64),
    pub quantity: f64,
}

/// What a tenant is billed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub customer_id: String,
    pub subscription_id: String,
    pub price_id: String,
}

/// The product the metered (usage) prices belong to.
const USAGE_PRODUCT: &str = "indigo_usage";

/// The Stripe side of the plan catalogue, looked up once per process.
pub struct Stripe {
    client: Client,
    /// Price ids by lookup key: the plans' and the meters' usage prices.
    prices: Mutex<HashMap<String, String>>,
    /// Meter ids by event name, once found or created.
    meters: Mutex<HashMap<&'static str, String>>,
    /// The meter each usage price bills (none: not a usage price), once looked up.
    price_meters: Mutex<HashMap<String, Option<&'static str>>>,
}

fn currency(code: &str) -> Result<stripe_types::Currency, BillingError> {
    code.parse().map_err(|_| BillingError::Unexpected(format!("currency `{code}`")))
}

fn idempotent(key: &str) -> Result<RequestStrategy, BillingError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| BillingError::Unexpected(format!("idempotency key: {e}")))
}

impl Stripe {
    pub fn new(config: &StripeConfig) -> Result<Self, BillingError> {
        let client = ClientBuilder::new(config.secret_key.expose())
            .url(config.api_base.clone())
            .build()
            .map_err(|e| BillingError::Unexpected(e.to_string()))?;
        Ok(Self { client, prices: Mutex::default(), meters: Mutex::default(), price_meters: Mutex::default() })
    }

    /// Finds or creates every meter of [`METERS`] (once per process).
    pub async fn ensure_meters(&self) -> Result<(), BillingError> {
        let mut known = self.meters.lock().await;
        if known.len() == METERS.len() {
            return Ok(());
        }
        let existing = ListBillingMeter::new().limit(100).send(&self.client).await?;
        for meter in METERS {
            if let Some(found) = existing.data.iter().find(|m| m.event_name == meter.event_name) {
                known.insert(meter.event_name, found.id.to_string());
                continue;
            }
            let created = CreateBillingMeter::new(
                CreateBillingMeterDefaultAggregation::new(CreateBillingMeterDefaultAggregationFormula::Sum),
                meter.display_name,
                meter.event_name,
            )
            .customize()
            .request_strategy(idempotent(&format!("indigo-meter-{}", meter.event_name))?)
            .send(&self.client)
            .await?;
            known.insert(meter.event_name, created.id.to_string());
        }
        Ok(())
    }

    /// The monthly price of `plan`: product `indigo_<plan>` and the price with
    /// lookup key `indigo_<plan>_<amount>_<currency>`, each created only if absent.
    pub async fn ensure_price(&self, plan: &Plan) -> Result<String, BillingError> {
        let lookup_key = format!("indigo_{}_{}_{}", plan.name, plan.price_per_month, plan.currency);
        let product = (format!("indigo_{}", plan.name), format!("Indigo {}", plan.display_name));
        let amount = i64::try_from(plan.price_per_month)
            .map_err(|_| BillingError::Unexpected(format!("price of plan {}", plan.name)))?;
        let price = CreatePrice::new(currency(&plan.currency)?)
            .unit_amount(amount)
            .recurring(CreatePriceRecurring::new(CreatePriceRecurringInterval::Month));
        self.ensure_priced(&lookup_key, product, price).await
    }

    /// The usage price of every meter in `currency`, as `plans` prices it, by
    /// meter event name: lookup key `indigo_usage_<meter>_<price>_<currency>`,
    /// created only if absent.
    pub async fn ensure_usage_prices(
        &self,
        currency_code: &str,
        plans: &PlanCatalog,
    ) -> Result<Vec<(&'static str, String)>, BillingError> {
        self.ensure_meters().await?;
        let mut prices = Vec::with_capacity(METERS.len());
        for meter in METERS {
            let meter_id = self.meter_id(meter.event_name).await?;
            let mut recurring = CreatePriceRecurring::new(CreatePriceRecurringInterval::Month);
            recurring.usage_type = Some(CreatePriceRecurringUsageType::Metered);
            recurring.meter = Some(meter_id);
            let unit_price = plans.usage_price(meter.event_name);
            let price = CreatePrice::new(currency(currency_code)?).unit_amount_decimal(unit_price).recurring(recurring);
            let lookup_key = format!("{USAGE_PRODUCT}_{}_{unit_price}_{currency_code}", meter.event_name);
            let product = (USAGE_PRODUCT.to_owned(), "Indigo usage".to_owned());
            prices.push((meter.event_name, self.ensure_priced(&lookup_key, product, price).await?));
        }
        Ok(prices)
    }

    /// The price with `lookup_key`, of `product` (id and name), made as `price`
    /// says when there is none; the product too.
    async fn ensure_priced(
        &self,
        lookup_key: &str,
        (product_id, product_name): (String, String),
        price: CreatePrice,
    ) -> Result<String, BillingError> {
        let mut prices = self.prices.lock().await;
        if let Some(id) = prices.get(lookup_key) {
            return Ok(id.clone());
        }
        match RetrieveProduct::new(product_id.as_str()).send(&self.client).await.map_err(BillingError::from) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                CreateProduct::new(product_name)
                    .id(product_id.as_str())
                    .customize()
                    .request_strategy(idempotent(&format!("indigo-product-{product_id}"))?)
                    .send(&self.client)
                    .await?;
            }
            Err(e) => return Err(e),
        }
        let existing = ListPrice::new().lookup_keys(vec![lookup_key.to_owned()]).send(&self.client).await?;
        let id = match existing.data.into_iter().next() {
            Some(price) => price.id.to_string(),
            None => price
                .product(product_id.as_str())
                .lookup_key(lookup_key)
                .customize()
                .request_strategy(idempotent(&format!("indigo-price-{lookup_key}"))?)
                .send(&self.client)
                .await?
                .id
                .to_string(),
        };
        prices.insert(lookup_key.to_owned(), id.clone());
        Ok(id)
    }

    /// The meter (its event name) a usage price bills, whatever its amount:
    /// the price's own meter, looked up once per price.
    async fn meter_of_price(&self, price_id: &str) -> Result<Option<&'static str>, BillingError> {
        if let Some(known) = self.price_meters.lock().await.get(price_id) {
            return Ok(*known);
        }
        self.ensure_meters().await?;
        let price = RetrievePrice::new(price_id).send(&self.client).await?;
        let meter_id = price.recurring.and_then(|r| r.meter);
        let meter = {
            let meters = self.meters.lock().await;
            meter_id.and_then(|id| meters.iter().find(|(_, known)| **known == id).map(|(name, _)| *name))
        };
        self.price_meters.lock().await.insert(price_id.to_owned(), meter);
        Ok(meter)
    }

    /// The id of the meter `event_name` (made by [`Stripe::ensure_meters`]).
    async fn meter_id(&self, event_name: &str) -> Result<String, BillingError> {
        self.meters
            .lock()
            .await
            .get(event_name)
            .cloned()
            .ok_or_else(|| BillingError::Unexpected(format!("no meter for {event_name}")))
    }

    /// The customer of a tenant; the same `key` always answers the same customer.
    pub async fn create_customer(
        &self,
        tenant: TenantId,
        name: &str,
        email: &str,
        key: &str,
    ) -> Result<String, BillingError> {
        let customer = CreateCustomer::new()
            .name(name)
            .email(email)
            .metadata(HashMap::from([("tenant_id".to_owned(), tenant.to_string())]))
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await?;
        Ok(customer.id.to_string())
    }

    /// The subscription of a tenant: the plan's price, and the usage price of
    /// every meter in the plan's `currency` as `plans` sets it. Returns its id
    /// and when it began (Unix seconds).
    pub async fn create_subscription(
        &self,
        tenant: TenantId,
        customer_id: &str,
        (price_id, currency, plans): (&str, &str, &PlanCatalog),
        key: &str,
    ) -> Result<(String, i64), BillingError> {
        let usage = self.ensure_usage_prices(currency, plans).await?;
        let items: Vec<CreateSubscriptionItems> = std::iter::once(price_id.to_owned())
            .chain(usage.into_iter().map(|(_, price)| price))
            .map(|price| {
                let mut item = CreateSubscriptionItems::new();
                item.price = Some(price);
                item
            })
            .collect();
        let subscription = CreateSubscription::new()
            .customer(customer_id)
            .items(items)
            .metadata(HashMap::from([("tenant_id".to_owned(), tenant.to_string())]))
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await?;
        Ok((subscription.id.to_string(), subscription.created))
    }

    /// The subscription's plan item (its one licensed item; the metered ones
    /// stay), unless it is on `price_id` already.
    async fn item_to_move(&self, subscription_id: &str, price_id: &str) -> Result<Option<String>, BillingError> {
        let subscription = RetrieveSubscription::new(subscription_id).send(&self.client).await?;
        let metered = |recurring: Option<&stripe_product::Recurring>| {
            recurring.is_some_and(|r| r.usage_type == stripe_product::RecurringUsageType::Metered)
        };
        let item = subscription
            .items
            .data
            .iter()
            .find(|item| !metered(item.price.recurring.as_ref()))
            .ok_or_else(|| BillingError::Unexpected(format!("subscription {subscription_id} has no plan item")))?;
        Ok((item.price.id.as_str() != price_id).then(|| item.id.to_string()))
    }

    /// Moves a subscription to `price_id` with prorations (a plan change): the
    /// same subscription and customer, its one item on the new price.
    pub async fn change_price(&self, subscription_id: &str, price_id: &str, key: &str) -> Result<(), BillingError> {
        let Some(item) = self.item_to_move(subscription_id, price_id).await? else { return Ok(()) };
        let mut change = UpdateSubscriptionItems::new();
        change.id = Some(item);
        change.price = Some(price_id.to_owned());
        UpdateSubscription::new(subscription_id)
            .items(vec![change])
            .proration_behavior(UpdateSubscriptionProrationBehavior::CreateProrations)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await?;
        Ok(())
    }

    /// What Stripe's meter `event_name` summed for `customer`, per hour from
    /// `start` to `end` (Unix seconds): each hour's start and its total.
    pub async fn received_hourly(
        &self,
        event_name: &str,
        customer: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, f64)>, BillingError> {
        self.ensure_meters().await?;
        let meter = self.meter_id(event_name).await?;
        let mut hours = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut ask = ListIdBillingMeterEventSummary::new(meter.as_str(), customer, end, start)
                .value_grouping_window(ListIdBillingMeterEventSummaryValueGroupingWindow::Hour)
                .limit(100);
            if let Some(after) = &after {
                ask = ask.starting_after(after.as_str());
            }
            let page = ask.send(&self.client).await?;
            hours.extend(page.data.iter().map(|s| (s.start_time, s.aggregated_value)));
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.to_string()),
                _ => return Ok(hours),
            }
        }
    }

    /// What moving a subscription to `price_id` now would invoice in
    /// prorations (minor units; a credit is negative), as Stripe's invoice
    /// preview for that change says. Nothing changes.
    pub async fn preview_price_change(&self, subscription_id: &str, price_id: &str) -> Result<i64, BillingError> {
        let Some(item) = self.item_to_move(subscription_id, price_id).await? else { return Ok(0) };
        let mut change = CreatePreviewInvoiceSubscriptionDetailsItems::new();
        change.id = Some(item);
        change.price = Some(price_id.to_owned());
        let mut details = CreatePreviewInvoiceSubscriptionDetails::new();
        details.items = Some(vec![change]);
        details.proration_behavior = Some(CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::CreateProrations);
        let invoice = CreatePreviewInvoice::new()
            .subscription(subscription_id)
            .subscription_details(details)
            .send(&self.client)
            .await?;
        Ok(invoice
            .lines
            .data
            .iter()
            .filter(|line| {
                line.parent.as_ref().and_then(|p| p.subscription_item_details.as_ref()).is_some_and(|s| s.proration)
            })
            .map(|line| line.amount)
            .sum())
    }

    /// The metered lines of `customer`'s finalized invoices created since
    /// `since` (Unix seconds): what Stripe invoiced for each meter, and when.
    pub async fn invoiced_usage(&self, customer: &str, since: i64) -> Result<Vec<InvoicedUsage>, BillingError> {
        let mut usage = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut ask = ListInvoice::new().customer(customer).limit(100);
            if let Some(after) = &after {
                ask = ask.starting_after(after.as_str());
            }
            let page = ask.send(&self.client).await?;
            for invoice in &page.data {
                let finalized = matches!(
                    invoice.status,
                    Some(InvoiceStatus::Open | InvoiceStatus::Paid | InvoiceStatus::Uncollectible)
                );
                let Some(id) = invoice.id.as_ref().filter(|_| finalized && invoice.created >= since) else { continue };
                for line in &invoice.lines.data {
                    let details = line.pricing.as_ref().and_then(|p| p.price_details.as_ref());
                    let Some(details) = details.filter(|d| d.product == USAGE_PRODUCT) else { continue };
                    let Some(meter) = self.meter_of_price(details.price.id().as_str()).await? else { continue };
                    let quantity = match &line.quantity_decimal {
                        Some(decimal) => decimal.parse().unwrap_or_default(),
                        None => line.quantity.unwrap_or_default() as f64,
                    };
                    usage.push(InvoicedUsage {
                        invoice: id.to_string(),
                        meter,
                        period: (line.period.start, line.period.end),
                        quantity,
                    });
                }
            }
            match (page.has_more, page.data.last().and_then(|i| i.id.as_ref())) {
                (true, Some(last)) => after = Some(last.to_string()),
                _ => return Ok(usage),
            }
        }
    }

    /// The tenant a live customer belongs to (its `tenant_id` metadata);
    /// `None` when the customer is deleted or unknown.
    pub async fn customer_tenant(&self, customer_id: &str) -> Result<Option<String>, BillingError> {
        match RetrieveCustomer::new(customer_id).send(&self.client).await.map_err(BillingError::from) {
            Ok(RetrieveCustomerReturned::Customer(customer)) => {
                Ok(Some(customer.metadata.and_then(|m| m.get("tenant_id").cloned()).unwrap_or_default()))
            }
            Ok(RetrieveCustomerReturned::DeletedCustomer(_)) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reports `value` of metered usage for a customer at `timestamp`. Stripe
    /// keeps one event per `identifier`, so a resent report counts once.
    pub async fn report_usage(
        &self,
        event_name: &str,
        customer_id: &str,
        value: f64,
        timestamp: i64,
        identifier: &str,
    ) -> Result<(), BillingError> {
        let payload = HashMap::from([
            ("stripe_customer_id".to_owned(), customer_id.to_owned()),
            ("value".to_owned(), meter_value(value)),
        ]);
        CreateBillingMeterEvent::new(event_name, payload)
            .identifier(identifier)
            .timestamp(timestamp)
            .customize()
            .request_strategy(idempotent(identifier)?)
            .send(&self.client)
            .await?;
        Ok(())
    }

    /// Cancels a subscription; one already cancelled or gone is fine.
    pub async fn cancel_subscription(&self, subscription_id: &str, key: &str) -> Result<(), BillingError> {
        let request = CancelSubscription::new(subscription_id).customize().request_strategy(idempotent(key)?);
        gone_is_done(request.send(&self.client).await)
    }

    /// Deletes a customer (Stripe keeps it archived); one already gone is fine.
    pub async fn delete_customer(&self, customer_id: &str, key: &str) -> Result<(), BillingError> {
        let request = DeleteCustomer::new(customer_id).customize().request_strategy(idempotent(key)?);
        gone_is_done(request.send(&self.client).await)
    }
}
