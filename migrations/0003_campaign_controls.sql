ALTER TABLE "coupons" ADD COLUMN "paused" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "discount" jsonb;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "metadata" jsonb;--> statement-breakpoint
CREATE INDEX "coupon_issues_coupon_created" ON "coupon_issues" USING btree ("coupon_id","created_at","id");