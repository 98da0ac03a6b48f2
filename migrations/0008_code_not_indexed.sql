-- Nothing looks a unit up by its code in Postgres (Redis answers GET /codes/:code), and codes are unique by
-- construction; the unique index cost about 4 µs of Postgres CPU per persisted issue (docs/benchmarks.md).
DROP INDEX "coupon_issues_code";