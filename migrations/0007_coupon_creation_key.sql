ALTER TABLE "coupons" ADD COLUMN "creation_key" text;--> statement-breakpoint
ALTER TABLE "coupons" ADD COLUMN "creation_request" text;--> statement-breakpoint
CREATE UNIQUE INDEX "coupons_creation_key" ON "coupons" USING btree ("creation_key");