ALTER TABLE "coupon_issues" ADD COLUMN "code" text;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_secret" text DEFAULT replace(gen_random_uuid()::text, '-', '') NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_prefix" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_length" integer DEFAULT 12 NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "coupon_issues_code" ON "coupon_issues" USING btree ("code");--> statement-breakpoint
ALTER TABLE "coupons" ADD CONSTRAINT "coupons_code_length" CHECK ("coupons"."code_length" BETWEEN 12 AND 32);--> statement-breakpoint
ALTER TABLE "coupons" ADD CONSTRAINT "coupons_code_prefix" CHECK ("coupons"."code_prefix" ~ '^[A-Z0-9-]{0,12}$');