CREATE TABLE "coupon_redemptions" (
	"coupon_id" bigint NOT NULL,
	"user_id" text NOT NULL,
	"claim" integer NOT NULL,
	"kind" text NOT NULL,
	"order_id" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"stream_id" text NOT NULL,
	"persisted_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "coupon_redemptions_kind" CHECK ("coupon_redemptions"."kind" IN ('redeem', 'rollback'))
);
--> statement-breakpoint
ALTER TABLE "coupon_issues" ADD COLUMN "code" text;--> statement-breakpoint
ALTER TABLE "coupon_issues" ADD COLUMN "redeemed_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "coupon_issues" ADD COLUMN "order_id" text;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_secret" text DEFAULT replace(gen_random_uuid()::text, '-', '') NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_prefix" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "code_length" integer DEFAULT 12 NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "valid_for" text;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "valid_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "coupon_redemptions" ADD CONSTRAINT "coupon_redemptions_coupon_id_coupons_id_fk" FOREIGN KEY ("coupon_id") REFERENCES "public"."coupons"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "coupon_redemptions_coupon_stream" ON "coupon_redemptions" USING btree ("coupon_id","stream_id");--> statement-breakpoint
CREATE INDEX "coupon_redemptions_unit" ON "coupon_redemptions" USING btree ("coupon_id","user_id","claim");--> statement-breakpoint
CREATE UNIQUE INDEX "coupon_issues_code" ON "coupon_issues" USING btree ("code");--> statement-breakpoint
ALTER TABLE "coupons" ADD CONSTRAINT "coupons_code_length" CHECK ("coupons"."code_length" BETWEEN 12 AND 32);--> statement-breakpoint
ALTER TABLE "coupons" ADD CONSTRAINT "coupons_code_prefix" CHECK ("coupons"."code_prefix" ~ '^[A-Z0-9-]{0,12}$');--> statement-breakpoint
ALTER TABLE "coupons" ADD CONSTRAINT "coupons_one_validity" CHECK ("coupons"."valid_for" IS NULL OR "coupons"."valid_until" IS NULL);