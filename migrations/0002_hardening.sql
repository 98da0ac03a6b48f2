ALTER TABLE "coupon_issues" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "up_to_claim" integer;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "units" integer;--> statement-breakpoint
ALTER TABLE "coupon_revocations" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "failed_issue_events" ADD COLUMN "discarded_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "failed_issue_events" ADD COLUMN "discard_reason" text;--> statement-breakpoint
-- Applies recorded cancels to the rows they name, for the given (coupon, user) pairs. Called by each
-- writer after its own commit (see persistEvents). Takes a row lock on coupon_issues only when a pair
-- has a cancel at all, so a rush nobody cancels in costs one index probe and no table lock.
-- A cancel without up_to_claim predates that column (legacy): only then are moments compared.
CREATE OR REPLACE FUNCTION apply_coupon_revocations(p_coupon_ids bigint[], p_user_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  changed integer := 0;
BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM coupon_revocations r
    JOIN unnest(p_coupon_ids, p_user_ids) AS p(coupon_id, user_id) ON r.coupon_id = p.coupon_id AND r.user_id = p.user_id
  ) THEN
    RETURN 0;
  END IF;
  UPDATE coupon_issues i SET revoked_at = hit.revoked_at
  FROM (
    SELECT i2.id, min(r.revoked_at) AS revoked_at
    FROM unnest(p_coupon_ids, p_user_ids) AS p(coupon_id, user_id)
    JOIN coupon_revocations r ON r.coupon_id = p.coupon_id AND r.user_id = p.user_id
    JOIN coupon_issues i2 ON i2.coupon_id = r.coupon_id AND i2.user_id = r.user_id AND i2.revoked_at IS NULL
     AND (r.up_to_claim >= i2.claim OR (r.up_to_claim IS NULL AND r.revoked_at >= i2.created_at))
    GROUP BY i2.id
  ) AS hit
  WHERE i.id = hit.id AND i.revoked_at IS NULL;
  GET DIAGNOSTICS changed = ROW_COUNT;
  RETURN changed;
END $$;
