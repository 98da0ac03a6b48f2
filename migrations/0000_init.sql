CREATE TABLE "coupon_issues" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "coupon_issues_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"coupon_id" bigint NOT NULL,
	"user_id" text NOT NULL,
	"claim" integer DEFAULT 1 NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"persisted_at" timestamp with time zone DEFAULT now() NOT NULL,
	"stream_id" text NOT NULL,
	"revoked_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "coupon_revocations" (
	"coupon_id" bigint NOT NULL,
	"user_id" text NOT NULL,
	"revoked_at" timestamp with time zone NOT NULL,
	"stream_id" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "coupons" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "coupons_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"name" text NOT NULL,
	"total_quantity" integer NOT NULL,
	"per_user_limit" integer DEFAULT 1 NOT NULL,
	"starts_at" timestamp with time zone DEFAULT now() NOT NULL,
	"ends_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "coupons_total_quantity_positive" CHECK ("coupons"."total_quantity" > 0),
	CONSTRAINT "coupons_per_user_limit_positive" CHECK ("coupons"."per_user_limit" > 0),
	CONSTRAINT "coupons_window_ordered" CHECK ("coupons"."ends_at" IS NULL OR "coupons"."ends_at" > "coupons"."starts_at")
);
--> statement-breakpoint
CREATE TABLE "failed_issue_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "failed_issue_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"stream_key" text NOT NULL,
	"stream_id" text NOT NULL,
	"payload" jsonb NOT NULL,
	"error" text NOT NULL,
	"deliveries" integer NOT NULL,
	"failed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"retried_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "coupon_issues" ADD CONSTRAINT "coupon_issues_coupon_id_coupons_id_fk" FOREIGN KEY ("coupon_id") REFERENCES "public"."coupons"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD CONSTRAINT "coupon_revocations_coupon_id_coupons_id_fk" FOREIGN KEY ("coupon_id") REFERENCES "public"."coupons"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "coupon_issues_coupon_user_claim" ON "coupon_issues" USING btree ("coupon_id","user_id","claim");--> statement-breakpoint
CREATE INDEX "coupon_issues_user" ON "coupon_issues" USING btree ("user_id");--> statement-breakpoint
CREATE UNIQUE INDEX "coupon_revocations_coupon_stream" ON "coupon_revocations" USING btree ("coupon_id","stream_id");--> statement-breakpoint
CREATE INDEX "coupon_revocations_coupon_user" ON "coupon_revocations" USING btree ("coupon_id","user_id");--> statement-breakpoint
CREATE UNIQUE INDEX "failed_issue_events_stream_entry" ON "failed_issue_events" USING btree ("stream_key","stream_id");