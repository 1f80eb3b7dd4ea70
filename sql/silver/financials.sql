-- silver.financials: one typed, cleaned row per customer application.
--   numbers: a stray trailing underscore is dropped (`52312.68_` is 52312.68); placeholders
--     (`_`, the sentinel `__10000__`) and values outside a plausible range (hundreds of bank
--     accounts, Num_of_Loan -100, Monthly_Balance -3.3e26) are NULL; text that is no number
--     sends the row to quarantine
--   Credit_Mix (Good/Standard/Bad), Payment_of_Min_Amount (Yes/No/NM, a category, not a
--     boolean) and Payment_Behaviour: any other value (`_`, `!@9#%8`) is NULL
--   Payment_Behaviour `High_spent_Small_value_payments` is split into spend_level (Low/High)
--     and value_level (Small/Medium/Large)
--   Credit_History_Age `10 Years and 9 Months` is 129 months
--   Type_of_Loan `A, B, and C` becomes one flag per known loan type and a count of the list
-- Input: `raw_features_financials`.
WITH cleaned AS (
    SELECT
        _source_file, _row_number, _snapshot_month,
        nullif(trim(Customer_ID), '') AS customer_id,
        parse_source_date(snapshot_date) AS snapshot_date,
        clean_number(Annual_Income, 0, 1e8) AS num__Annual_Income,
        clean_number(Monthly_Inhand_Salary, 0, 1e7) AS num__Monthly_Inhand_Salary,
        clean_number(Num_Bank_Accounts, 0, 20, whole := true) AS int__Num_Bank_Accounts,
        clean_number(Num_Credit_Card, 0, 20, whole := true) AS int__Num_Credit_Card,
        clean_number(Interest_Rate, 0, 100) AS num__Interest_Rate,
        clean_number(Num_of_Loan, 0, 20, whole := true) AS int__Num_of_Loan,
        clean_number(Delay_from_due_date, -31, 366, whole := true) AS int__Delay_from_due_date,
        clean_number(Num_of_Delayed_Payment, 0, 100, whole := true)
            AS int__Num_of_Delayed_Payment,
        clean_number(Changed_Credit_Limit, -100, 100) AS num__Changed_Credit_Limit,
        clean_number(Num_Credit_Inquiries, 0, 100, whole := true) AS int__Num_Credit_Inquiries,
        clean_number(Outstanding_Debt, 0, 1e8) AS num__Outstanding_Debt,
        clean_number(Credit_Utilization_Ratio, 0, 100) AS num__Credit_Utilization_Ratio,
        clean_number(Total_EMI_per_month, 0, 1e6) AS num__Total_EMI_per_month,
        clean_number(Amount_invested_monthly, 0, 1e7) AS num__Amount_invested_monthly,
        clean_number(Monthly_Balance, -1e7, 1e7) AS num__Monthly_Balance,
        clean_category(Credit_Mix, ['Good', 'Standard', 'Bad']) AS cat__Credit_Mix,
        clean_category(Payment_of_Min_Amount, ['Yes', 'No', 'NM']) AS cat__Payment_of_Min_Amount,
        clean_category(Payment_Behaviour, [
            'Low_spent_Small_value_payments', 'Low_spent_Medium_value_payments',
            'Low_spent_Large_value_payments', 'High_spent_Small_value_payments',
            'High_spent_Medium_value_payments', 'High_spent_Large_value_payments'
        ]) AS cat__Payment_Behaviour,
        regexp_extract(trim(Credit_History_Age), '^([0-9]+) Years? and ([0-9]+) Months?$',
                       ['years', 'months']) AS credit_history,
        Credit_History_Age AS credit_history_text,
        CASE WHEN nullif(trim(Type_of_Loan), '') IS NULL THEN []
             ELSE list_filter(list_transform(
                      string_split(regexp_replace(trim(Type_of_Loan), '(,\s*|\s+)and\s+', ',', 'g'), ','),
                      lambda item: trim(item)), lambda item: item <> '') END AS loan_types
    FROM raw_features_financials
),
checked AS (
    SELECT
        *,
        CASE WHEN customer_id IS NULL THEN 'Customer_ID is missing' END AS problem__customer_id,
        number_problem(alias(COLUMNS('^(num|int)__.+$')), COLUMNS('^(num|int)__.+$'), false)
            AS 'problem__\0',
        {
            'value': TRY_CAST(credit_history.years AS INTEGER) * 12
                     + TRY_CAST(credit_history.months AS INTEGER),
            'unparseable': coalesce(trim(credit_history_text) <> '' AND credit_history.years = '',
                                    false)
        } AS parsed__Credit_History_Age,
        {
            'value': loan_types,
            'unknown_type': len(list_filter(loan_types, lambda item: item NOT IN (
                'Auto Loan', 'Credit-Builder Loan', 'Personal Loan', 'Home Equity Loan',
                'Mortgage Loan', 'Student Loan', 'Debt Consolidation Loan', 'Payday Loan',
                'Not Specified'))) > 0
        } AS parsed__Type_of_Loan
    FROM cleaned
)
SELECT
    customer_id,
    snapshot_date,
    num__Annual_Income.value AS annual_income,
    num__Monthly_Inhand_Salary.value AS monthly_inhand_salary,
    int__Num_Bank_Accounts.value::INTEGER AS num_bank_accounts,
    int__Num_Credit_Card.value::INTEGER AS num_credit_card,
    num__Interest_Rate.value AS interest_rate,
    int__Num_of_Loan.value::INTEGER AS num_of_loan,
    list_contains(loan_types, 'Auto Loan') AS loan_type_auto,
    list_contains(loan_types, 'Credit-Builder Loan') AS loan_type_credit_builder,
    list_contains(loan_types, 'Personal Loan') AS loan_type_personal,
    list_contains(loan_types, 'Home Equity Loan') AS loan_type_home_equity,
    list_contains(loan_types, 'Mortgage Loan') AS loan_type_mortgage,
    list_contains(loan_types, 'Student Loan') AS loan_type_student,
    list_contains(loan_types, 'Debt Consolidation Loan') AS loan_type_debt_consolidation,
    list_contains(loan_types, 'Payday Loan') AS loan_type_payday,
    list_contains(loan_types, 'Not Specified') AS loan_type_not_specified,
    len(loan_types)::INTEGER AS loan_type_count,
    int__Delay_from_due_date.value::INTEGER AS delay_from_due_date,
    int__Num_of_Delayed_Payment.value::INTEGER AS num_of_delayed_payment,
    num__Changed_Credit_Limit.value AS changed_credit_limit,
    int__Num_Credit_Inquiries.value::INTEGER AS num_credit_inquiries,
    cat__Credit_Mix.value AS credit_mix,
    num__Outstanding_Debt.value AS outstanding_debt,
    num__Credit_Utilization_Ratio.value AS credit_utilization_ratio,
    parsed__Credit_History_Age.value AS credit_history_age_months,
    cat__Payment_of_Min_Amount.value AS payment_of_min_amount,
    num__Total_EMI_per_month.value AS total_emi_per_month,
    num__Amount_invested_monthly.value AS amount_invested_monthly,
    cat__Payment_Behaviour.value AS payment_behaviour,
    split_part(cat__Payment_Behaviour.value, '_spent_', 1) AS spend_level,
    regexp_extract(cat__Payment_Behaviour.value, '_spent_([A-Za-z]+)_value_payments$', 1)
        AS value_level,
    num__Monthly_Balance.value AS monthly_balance,
    COLUMNS('^(num|int|cat|parsed)__.+$'),
    nullif(concat_ws('; ', *COLUMNS('^problem__')), '') AS _reject_reason,
    _source_file, _row_number, _snapshot_month
FROM checked
