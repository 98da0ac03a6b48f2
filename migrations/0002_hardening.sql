ALTER TABLE "coupon_issues" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "up_to_claim" integer;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "units" integer;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "failed_issue_events" ADD COLUMN "discarded_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "failed_issue_events" ADD COLUMN "discard_reason" text;