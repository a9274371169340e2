//! The AWS provider: silo databases on Aurora ([`rds`]) and the data plane on
//! ECS ([`ecs`]), through the standard AWS configuration chain
//! (`AWS_ENDPOINT_URL` included, which is how the tests reach moto).
//!
//! AWS errors are sorted for the reconciler: throttling, 5xx and transport
//! failures are transient (retried with backoff); anything else is permanent
//! and carries AWS's code and message into the tenant's conditions.

pub mod ecs;
pub mod rds;

use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::ProviderError;

/// Throttling, AWS-side failures and transport trouble pass; the rest is permanent.
fn classify<E, R>(error: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let service = match &error {
        SdkError::ServiceError(service) => service.err(),
        other => return ProviderError::Transient(format!("AWS RDS unreachable: {}", DisplayErrorContext(other))),
    };
    let code = service.code().unwrap_or("Unknown").to_owned();
    let message = service.message().map(str::to_owned).unwrap_or_else(|| service.to_string());
    let transient = matches!(
        code.as_str(),
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "InvalidDBClusterStateFault"
            | "InvalidDBInstanceState"
    );
    if transient {
        ProviderError::Transient(format!("AWS RDS {code}: {message}"))
    } else {
        ProviderError::Permanent { reason: code, message }
    }
}

/// A call's outcome where some refusals mean it is already so (created by
/// someone else, or gone already): those count as done.
fn done_unless_refused<T, E, R>(result: Result<T, SdkError<E, R>>, already: &[&str]) -> Result<(), ProviderError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Err(e) if !is_code(&e, already) => Err(classify(e)),
        _ => Ok(()),
    }
}

fn is_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>, codes: &[&str]) -> bool {
    matches!(error, SdkError::ServiceError(service) if service.err().code().is_some_and(|c| codes.contains(&c)))
}

#[cfg(test)]
mod tests {
    use aws_sdk_rds::error::ErrorMetadata;
    use aws_sdk_rds::operation::create_db_cluster::CreateDBClusterError;

    use super::*;

    fn refused(code: &str) -> SdkError<CreateDBClusterError, ()> {
        let metadata = ErrorMetadata::builder().code(code).message("what AWS said").build();
        SdkError::service_error(CreateDBClusterError::generic(metadata), ())
    }

    #[test]
    fn throttling_and_outages_pass_the_rest_is_the_operators_with_aws_reason() {
        for code in ["Throttling", "RequestLimitExceeded", "InternalFailure", "InvalidDBClusterStateFault"] {
            assert!(matches!(classify(refused(code)), ProviderError::Transient(_)), "{code}");
        }
        assert_eq!(
            classify(refused("InsufficientDBClusterCapacityFault")),
            ProviderError::Permanent {
                reason: "InsufficientDBClusterCapacityFault".into(),
                message: "what AWS said".into()
            }
        );
        assert!(matches!(classify(refused("DBClusterQuotaExceededFault")), ProviderError::Permanent { .. }));
        let timeout: SdkError<CreateDBClusterError, ()> = SdkError::timeout_error("no answer in 30 s");
        assert!(matches!(classify(timeout), ProviderError::Transient(m) if m.contains("no answer")));
    }
}
